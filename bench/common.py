"""Shared by the benchmarks: the emulators and Azurite in a child process, figures of this process."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def emulators(*args: str):
    """Start ``python -m emulators <args>``; set the app's settings in this process's environment; yield a
    function that sends the child a command (``stats`` by default) and returns its JSON answer."""
    proc = subprocess.Popen([sys.executable, "-m", "emulators", *args], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        env = json.loads(proc.stdout.readline())
        os.environ.update(env)
        os.environ.setdefault("SYNC_TABLE_PREFIX", "bench")
        from sync.settings import reset_settings
        reset_settings()

        def command(text: str = "stats") -> dict:
            proc.stdin.write(text + "\n")
            proc.stdin.flush()
            return json.loads(proc.stdout.readline())

        yield command
    finally:
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def row(label: str, value) -> None:
    print(f"  {label:<44} {value}")
