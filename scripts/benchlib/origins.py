"""The servers the benchmarks measure against, on 127.0.0.1: ``git daemon`` (the tests'
``GitDaemon``, untraced unless asked, with the benchmarks' git environment) and the tests' Hub
stand-in (``tests.helpers.hub.HubServer``) in a process of its own, so that serving never
competes with the measuring process for the GIL.

``python -m scripts.benchlib.origins SPEC`` is that process: SPEC (JSON) names the repository
and its files; it prints its endpoint, then answers ``served PATH`` and ``clear`` on stdin.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

from tests.helpers.mounts import stop_process
from tests.helpers.servers import GitDaemon

from .cli import BenchError
from .paths import ROOT
from .repos import GIT_ENV

GIT_DAEMON_ATTEMPTS = 3
"""Ports tried: a free port may be taken before the daemon binds it."""


@contextlib.contextmanager
def git_daemon(base: Path, log: Path, trace: Path | None = None) -> Iterator[GitDaemon]:
    """Serve every repository under ``base`` with ``git daemon``, its output appended to
    ``log``; with ``trace``, the pkt-lines its upload-packs receive are written there
    (``GIT_TRACE_PACKET``: only the daemon is traced, not the clients)."""
    if trace is not None:
        trace.write_bytes(b"")
    for _attempt in range(GIT_DAEMON_ATTEMPTS):
        try:
            daemon = GitDaemon(base, trace=trace or False, log=log, env=GIT_ENV)
        except AssertionError:  # exited (port taken?) or never listened: try another port
            continue
        try:
            yield daemon
        finally:
            daemon.stop()
        return
    raise BenchError(f"git daemon did not start (see {log})")


# -- the Hub stand-in, in a process of its own -----------------------------------------------


class StandIn:
    """The stand-in process seen from the benchmark: its endpoint and byte counters."""

    def __init__(self, process: subprocess.Popen[str], repo_id: str) -> None:
        self.process = process
        self.repo_id = repo_id
        assert process.stdout is not None
        first = process.stdout.readline()
        if not first:
            raise BenchError("the Hub stand-in exited before serving")
        self.endpoint = str(json.loads(first)["endpoint"])

    def ask(self, command: str) -> str:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        if not answer:
            raise BenchError("the Hub stand-in exited")
        return answer.strip()

    def served(self, path: str) -> int:
        """Bytes of ``path`` the stand-in has sent since the last ``clear``."""
        return int(self.ask(f"served {path}"))

    def clear(self) -> None:
        self.ask("clear")


@contextlib.contextmanager
def hub_stand_in(
    repo_id: str, files: Mapping[str, Path], texts: Mapping[str, str]
) -> Iterator[StandIn]:
    """The Hub stand-in serving the model repository ``repo_id`` of ``files`` (read from disk)
    and ``texts``; stopped however the block ends."""
    spec = {
        "repo_id": repo_id,
        "files": {name: str(path) for name, path in files.items()},
        "texts": dict(texts),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "scripts.benchlib.origins", json.dumps(spec)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        yield StandIn(process, repo_id)
    finally:
        if process.stdin is not None:
            process.stdin.close()
        stop_process(process)


def serve_hub(spec: dict[str, object]) -> None:
    """The stand-in process: serve ``spec``; answer ``served PATH`` and ``clear`` on stdin."""
    from tests.helpers.hub import HubServer

    repo_id = str(spec["repo_id"])
    files = spec["files"]
    texts = spec["texts"]
    assert isinstance(files, dict) and isinstance(texts, dict)
    content: dict[str, Path | bytes] = {name: Path(path) for name, path in files.items()}
    content.update({name: str(text).encode() for name, text in texts.items()})
    with HubServer() as server:
        server.create_repo(repo_id, content)
        print(json.dumps({"endpoint": server.endpoint}), flush=True)
        for line in sys.stdin:
            command, _, argument = line.strip().partition(" ")
            if command == "served":
                print(server.bytes_served(repo_id, argument), flush=True)
            elif command == "clear":
                server.clear_counters()
                print("ok", flush=True)
            if server.errors:
                print(f"bench: stand-in error: {server.errors[-1]}", file=sys.stderr)


if __name__ == "__main__":
    serve_hub(json.loads(sys.argv[1]))
