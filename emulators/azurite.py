"""Start Azurite (npm package ``azurite``, installed by ``npm install`` from package.json) for tests and the sandbox.

Blob, queue and table services on 127.0.0.1, free ports, a throw-away location, telemetry off. Use as a
context manager; ``connection_string`` is what ``SYNC_STORAGE_CONNECTION``/``AzureWebJobsStorage`` take.
Endpoints use ``127.0.0.1`` (never ``localhost``): azure-data-tables treats ``localhost`` on a port other
than 10002 as a Cosmos endpoint.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def azurite_binary() -> str:
    local = ROOT / "node_modules" / ".bin" / "azurite"
    if local.exists():
        return str(local)
    found = shutil.which("azurite")
    if found:
        return found
    raise RuntimeError("azurite not found: run `npm install` in the project folder (package.json pins it)")


class Azurite:
    def __init__(self):
        self.location = tempfile.mkdtemp(prefix="azurite-")
        self.ports = {"blob": 0, "queue": 0, "table": 0}
        self.proc: subprocess.Popen | None = None

    @property
    def connection_string(self) -> str:
        p = self.ports
        return (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
                f"BlobEndpoint=http://127.0.0.1:{p['blob']}/{ACCOUNT};"
                f"QueueEndpoint=http://127.0.0.1:{p['queue']}/{ACCOUNT};"
                f"TableEndpoint=http://127.0.0.1:{p['table']}/{ACCOUNT};")

    def start(self, timeout: float = 30.0) -> "Azurite":
        for attempt in range(3):  # a free port can be taken between probing and binding: try again
            self.ports = {name: _free_port() for name in self.ports}
            log = open(os.path.join(self.location, "azurite.log"), "ab")
            self.proc = subprocess.Popen(
                [azurite_binary(), "--silent", "--disableTelemetry", "--skipApiVersionCheck",
                 "--location", self.location,
                 "--blobHost", "127.0.0.1", "--blobPort", str(self.ports["blob"]),
                 "--queueHost", "127.0.0.1", "--queuePort", str(self.ports["queue"]),
                 "--tableHost", "127.0.0.1", "--tablePort", str(self.ports["table"])],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
            log.close()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                if all(self._listening(p) for p in self.ports.values()):
                    return self
                time.sleep(0.1)
            self.stop(keep_location=True)
        raise RuntimeError(f"Azurite did not start; see {self.location}/azurite.log")

    @staticmethod
    def _listening(port: int) -> bool:
        with socket.socket() as s:
            s.settimeout(0.2)
            return s.connect_ex(("127.0.0.1", port)) == 0

    def stop(self, keep_location: bool = False) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        if not keep_location:
            shutil.rmtree(self.location, ignore_errors=True)

    def __enter__(self) -> "Azurite":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
