import pytest

from sync.errors import ConfigurationError
from sync.settings import DEFAULT_SCHEDULE, Settings

GOOD = {
    "BC_API_BASE_URL": "https://api.businesscentral.dynamics.com/v2.0/contoso.com/Production/api/v2.0",
    "BC_COMPANY_ID": "F64EBA74-DACD-4854-A584-1834F68CFC3A",
    "DATAVERSE_URL": "https://contoso.crm4.dynamics.com/",
    "AzureWebJobsStorage": "UseDevelopmentStorage=true",
}


def test_good_settings_are_normalised():
    s = Settings.from_env(GOOD)
    assert s.bc_company_id == "f64eba74-dacd-4854-a584-1834f68cfc3a"
    assert s.dataverse_url == "https://contoso.crm4.dynamics.com"
    assert s.dataverse_api_url == "https://contoso.crm4.dynamics.com/api/data/v9.2"
    assert s.dataverse_scope == "https://contoso.crm4.dynamics.com/.default"
    assert s.bc_scope == "https://api.businesscentral.dynamics.com/.default"
    assert s.storage_connection == "UseDevelopmentStorage=true"  # falls back to AzureWebJobsStorage
    assert s.sync_schedule == DEFAULT_SCHEDULE
    assert s.local_dev_token is None


@pytest.mark.parametrize("name, value", [
    ("BC_API_BASE_URL", None),
    ("BC_API_BASE_URL", "https://api.businesscentral.dynamics.com/v2.0/t/e/api/v1.0"),
    ("BC_API_BASE_URL", "http://api.businesscentral.dynamics.com/v2.0/t/e/api/v2.0"),
    ("BC_API_BASE_URL", "not a url"),
    ("BC_COMPANY_ID", None),
    ("BC_COMPANY_ID", "CRONUS"),
    ("DATAVERSE_URL", None),
    ("DATAVERSE_URL", "https://contoso.crm.dynamics.com/api/data/v9.2"),
    ("DATAVERSE_URL", "https://contoso.crm.dynamics.com?x=1"),
    ("SYNC_SCHEDULE", "*/5 * * * *"),
    ("SYNC_TABLE_PREFIX", "1bad-prefix"),
])
def test_a_wrong_or_missing_setting_is_named(name, value):
    env = dict(GOOD)
    if value is None:
        env.pop(name, None)
    else:
        env[name] = value
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env(env)
    assert info.value.setting == name
    assert name in str(info.value)


def test_missing_storage_names_the_setting():
    env = dict(GOOD)
    env.pop("AzureWebJobsStorage")
    with pytest.raises(ConfigurationError, match="SYNC_STORAGE_CONNECTION"):
        Settings.from_env(env)


def test_local_dev_token_is_refused_unless_both_apis_are_on_loopback():
    env = dict(GOOD, LOCAL_DEV_TOKEN="secret")
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env(env)
    assert info.value.setting == "LOCAL_DEV_TOKEN"
    env["BC_API_BASE_URL"] = "http://127.0.0.1:8080/v2.0/t/e/api/v2.0"
    with pytest.raises(ConfigurationError):  # Dataverse still remote
        Settings.from_env(env)
    env["DATAVERSE_URL"] = "http://localhost:8081"
    assert Settings.from_env(env).local_dev_token == "secret"


def test_the_app_imports_and_lists_its_functions_without_any_setting():
    """A setting read at import time would make the Functions host hide every function."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BC_", "DATAVERSE_", "SYNC_", "LOCAL_DEV", "AzureWebJobs"))}
    proc = subprocess.run([sys.executable, "-c", "import function_app; print(len(function_app.app.get_functions()))"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.strip()) >= 2


def test_bc_webhook_url_is_optional_and_may_carry_the_function_key():
    assert Settings.from_env(GOOD).bc_webhook_url is None
    url = "https://sync.azurewebsites.net/api/webhooks/bc?code=abc"
    assert Settings.from_env(dict(GOOD, BC_WEBHOOK_URL=url)).bc_webhook_url == url
    with pytest.raises(ConfigurationError, match="BC_WEBHOOK_URL"):
        Settings.from_env(dict(GOOD, BC_WEBHOOK_URL="http://sync.example.com/api/webhooks/bc"))
