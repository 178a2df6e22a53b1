"""Benchmarks: scripts that print figures (never timed unit tests). Run with `.venv/bin/python -m bench.<name>`."""
