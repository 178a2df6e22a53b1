"""NCRONTAB (the six-field cron of Azure Functions timers: second minute hour day month day-of-week), pure.

The timer function ticks every minute and asks ``due`` whether ``SYNC_SCHEDULE`` fired in the last tick's
window. That keeps the schedule a normal app setting with a default (a ``%SETTING%`` binding expression would
make the host refuse to load the timer when the setting is missing) and lets a changed schedule apply without a
redeploy.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from .errors import ConfigurationError

_RANGES = ((0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 6))
_NAMES = ({}, {}, {}, {},
          {n: i + 1 for i, n in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split())},
          {n: i for i, n in enumerate("sun mon tue wed thu fri sat".split())})


@dataclass(frozen=True)
class Schedule:
    fields: tuple[frozenset[int], ...]
    text: str

    def matches(self, t: datetime) -> bool:
        second, minute, hour, day, month, dow = self.fields
        return (t.second in second and t.minute in minute and t.hour in hour and t.day in day
                and t.month in month and (t.isoweekday() % 7) in dow)


def _value(text: str, i: int) -> int:
    text = text.lower()
    if text in _NAMES[i]:
        return _NAMES[i][text]
    value = int(text)
    if i == 5 and value == 7:
        return 0
    return value


def _field(text: str, i: int) -> frozenset[int]:
    low, high = _RANGES[i]
    out: set[int] = set()
    for part in text.split(","):
        step = 1
        if "/" in part:
            part, step_text = part.split("/", 1)
            step = int(step_text)
            if step < 1:
                raise ValueError("step")
        if part == "*":
            start, end = low, high
        elif "-" in part:
            a, b = part.split("-", 1)
            start, end = _value(a, i), _value(b, i)
        else:
            start = _value(part, i)
            end = high if step > 1 else start
        if not (low <= start <= high and low <= end <= high and start <= end):
            raise ValueError("range")
        out.update(range(start, end + 1, step))
    return frozenset(out)


def parse(text: str, setting: str = "SYNC_SCHEDULE") -> Schedule:
    parts = text.split()
    if len(parts) != 6:
        raise ConfigurationError(setting, f"must have 6 fields (second minute hour day month day-of-week), got {text!r}")
    try:
        return Schedule(tuple(_field(p, i) for i, p in enumerate(parts)), text)
    except ValueError:
        raise ConfigurationError(setting, f"is not a valid NCRONTAB expression: {text!r}") from None


def due(schedule: Schedule, after: datetime, until: datetime) -> datetime | None:
    """The last time in ``(after, until]`` (whole seconds) the schedule fires, or None."""
    t = until.replace(microsecond=0)
    limit = after.replace(microsecond=0)
    steps = 0
    while t > limit and steps < 3600:  # a tick window is about a minute; never scan more than an hour
        if schedule.matches(t):
            return t
        t -= timedelta(seconds=1)
        steps += 1
    return None
