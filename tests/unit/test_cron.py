from datetime import datetime, timezone

import pytest

from sync import cron
from sync.errors import ConfigurationError


def t(*args):
    return datetime(*args, tzinfo=timezone.utc)


def test_every_30_minutes_like_bcs_job_queue():
    s = cron.parse("0 */30 * * * *")
    assert s.matches(t(2026, 11, 26, 10, 30, 0)) and s.matches(t(2026, 11, 26, 10, 0, 0))
    assert not s.matches(t(2026, 11, 26, 10, 15, 0)) and not s.matches(t(2026, 11, 26, 10, 30, 1))
    assert cron.due(s, t(2026, 11, 26, 10, 29, 0), t(2026, 11, 26, 10, 30, 0)) == t(2026, 11, 26, 10, 30, 0)
    assert cron.due(s, t(2026, 11, 26, 10, 30, 0), t(2026, 11, 26, 10, 31, 0)) is None  # no double firing


def test_lists_ranges_names_and_weekdays():
    s = cron.parse("0 0 9-17/4 * jan,DEC mon-fri")
    assert s.matches(t(2026, 12, 1, 13, 0, 0))  # a Tuesday
    assert not s.matches(t(2026, 12, 5, 13, 0, 0))  # a Saturday
    assert not s.matches(t(2026, 11, 2, 13, 0, 0))  # November
    assert cron.parse("0 0 0 * * 7").matches(t(2026, 11, 29, 0, 0, 0))  # 7 = Sunday too


@pytest.mark.parametrize("bad", ["*/5 * * * *", "0 61 * * * *", "0 */0 * * * *", "x * * * * *", "0 5-2 * * * *"])
def test_bad_expressions_name_the_setting(bad):
    with pytest.raises(ConfigurationError) as info:
        cron.parse(bad)
    assert info.value.setting == "SYNC_SCHEDULE"
