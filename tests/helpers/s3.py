"""A real S3 API server on loopback: moto's server mode, in a process of its own.

moto is the one S3 server installable here that honours ``If-None-Match: *`` and ``If-Match``
on PUT; it is used only as a server over HTTP (never as an in-process mock of a client). It
runs in a child process so that the test's own threads never slow it, on a port the kernel
chose (``ThreadedMotoServer(port=0)``). ``objects`` lists what a bucket holds, by plain HTTP.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_SERVE = """
import sys, threading
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()  # until the test closes our stdin
server.stop()
"""

ACCESS_KEY = "test-access-key"
SECRET_KEY = "test-secret-key"


class S3Server:
    def __init__(self, log: Path) -> None:
        self._log = open(log, "w")  # noqa: SIM115 - closed by stop
        self._process = subprocess.Popen(
            [sys.executable, "-c", _SERVE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline().strip()
        if not line.isdigit():
            self.stop()
            raise RuntimeError(f"moto did not start (it said {line!r}; see {log})")
        self.port = int(line)
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """What a process needs to reach it: credentials and region (moto accepts any)."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": "us-east-1",
        }

    def make_bucket(self, name: str) -> None:
        request = urllib.request.Request(f"{self.endpoint}/{name}", method="PUT")
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    def _bucket(self, bucket: str) -> Any:
        """A client of our own, to look at and damage what artifactfs stored."""
        import obstore.store

        return obstore.store.S3Store(
            bucket,
            config={
                "endpoint": self.endpoint,
                "access_key_id": ACCESS_KEY,
                "secret_access_key": SECRET_KEY,
                "region": "us-east-1",
            },
            client_options={"allow_http": True},
        )

    def objects(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key under ``prefix``."""
        import obstore

        keys: list[str] = []
        for page in obstore.list(self._bucket(bucket), prefix=prefix or None):
            keys += [str(meta["path"]) for meta in page]
        return sorted(keys)

    def read(self, bucket: str, key: str) -> bytes:
        import obstore

        return bytes(obstore.get(self._bucket(bucket), key).bytes())

    def write(self, bucket: str, key: str, data: bytes) -> None:
        """Overwrite an object behind artifactfs's back (to damage it)."""
        import obstore

        obstore.put(self._bucket(bucket), key, data)

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            if self._process.stdin is not None:
                self._process.stdin.close()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(10)
        if self._process.stdout is not None:
            self._process.stdout.close()
        self._log.close()


@contextlib.contextmanager
def running_s3(log: Path) -> Iterator[S3Server]:
    server = S3Server(log)
    try:
        yield server
    finally:
        server.stop()
