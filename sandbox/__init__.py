"""The sandbox: Azurite + both API emulators + the app, run locally with a short report (scripts/sandbox.sh)."""
