"""The app as the real Python worker indexes it (azure-functions-runtime on Python 3.13).

Core Tools can't be installed here, so this is the closest thing to `func start`: the worker's own loader
imports function_app.py and its Registry validates every function's bindings and parameters.
"""
import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tests" / "tools" / "index_with_worker.py"


def _indexer_python() -> str:
    path = os.environ.get("INDEXER_PYTHON") or str(ROOT / ".venv-indexer" / "bin" / "python")
    if not Path(path).exists():
        pytest.fail(f"{path} is missing: scripts/setup.sh creates the Python 3.13 indexer venv "
                    "(azure-functions-runtime); run it first")
    return path


def _index(app_dir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BC_", "DATAVERSE_", "SYNC_", "LOCAL_DEV"))}
    proc = subprocess.run([_indexer_python(), str(TOOL), str(app_dir)], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_function_loads_in_the_real_worker_without_settings():
    from .conftest import registered_functions

    expected = set(registered_functions())
    result = _index(ROOT)
    assert result["errors"] == []
    assert {f["name"] for f in result["functions"]} == expected
    assert len(expected) >= 2


def test_indexer_reports_a_broken_function(tmp_path):
    # Proves the check can fail: a parameter with no binding is what the worker refuses.
    (tmp_path / "function_app.py").write_text(textwrap.dedent("""
        import azure.functions as func
        app = func.FunctionApp()

        @app.route(route="x")
        def broken(req: func.HttpRequest, extra: str) -> func.HttpResponse:
            return func.HttpResponse("x")
    """))
    result = _index(tmp_path)
    assert [e["name"] for e in result["errors"]] == ["broken"]
    assert "extra" in result["errors"][0]["error"]
