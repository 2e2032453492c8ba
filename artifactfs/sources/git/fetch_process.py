"""Large blob fetches in a process of their own, so that they never slow the FUSE loop down.

Inflating, hashing and publishing thousands of blobs is Python work. In the mount's process it
shares the GIL with the loop that answers the kernel: each of the fetch thread's many system
calls per blob gives the GIL up and then waits to get it back while the loop serves a walker.
A pack of 3,600 blobs took 5 s to publish beside a ``grep -r`` against 1.4 s alone, and the
walker waited on it (docs/benchmarks.md, row 3). A child process has a GIL of its own, and
the machine's other core.

A child is started on first use and kept for the mount's life; it takes one batch at a time.
Up to ``CHILDREN`` batches run at once, each in its own child: while one child inflates and
publishes a pack, the server can be building the next. Each child is a plain ``python -m`` of
this module speaking one line per message on its stdin and stdout:

- parent to child, once: a JSON object describing the source (``_hello``); its credentials go
  this way, never through argv, the environment or a file;
- parent to child, per batch: ``{"wanted": {OID: SIZE or null, ...}}``;
- child to parent: ``+OID`` as each blob is published in the CAS, then ``=ok BYTES`` (bytes
  received from the origin) or ``=error TEXT`` (one line, safe to log) when the batch ends.

The parent believes only ids it asked for. A child that dies fails the batch it was running
(what it had published stays, and was reported) and is started again for the next. A child
exits when its stdin closes, within a second of its parent's death, and after a minute with
no batch (a walk's children give their memory back once it is over).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from ...errors import SourceError
from ..base import SourceSettings
from ..counters import FetchCounters
from ..credentials import CredentialProvider
from .fetcher import PartialFetch
from .remote import GitRemote
from .spec import GitSourceSpec

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 300
CHILDREN = 2
IDLE_SECONDS = 60.0
"""A child with no batch for this long exits (its ~40 MiB go back); the parent does not hand
a batch to one idle for more than ``IDLE_SECONDS - REUSE_MARGIN``, so none is sent to a child
that is leaving."""
REUSE_MARGIN = 10.0
SMALL_BATCH = 64
"""Batches of fewer blobs are fetched in the calling thread: starting the child (about 0.3 s
the first time) would cost them more than the GIL does."""


class FetchProcess:
    """The parent's side: ``fetch`` is a ``fetcher.FetchBatch`` (the child publishes into
    the same store as the source would). Blocking; call it from a worker thread."""

    def __init__(self, source: GitRemote) -> None:
        self._source = source
        self._lock = threading.Lock()
        self._idle: list[tuple[subprocess.Popen[bytes], float]] = []
        """Children waiting for a batch, and since when (``time.monotonic``)."""
        self._children: set[subprocess.Popen[bytes]] = set()
        self._closed = False

    def fetch(self, wanted: Mapping[str, int | None], published: Callable[[str], None]) -> set[str]:
        if len(wanted) < SMALL_BATCH:
            return self._source.fetch_blobs(wanted, published)
        child = self._take_child()
        assert child.stdin is not None and child.stdout is not None
        got: set[str] = set()
        try:
            child.stdin.write(json.dumps({"wanted": dict(wanted)}).encode() + b"\n")
            child.stdin.flush()
            for line in child.stdout:
                if line.startswith(b"+"):
                    oid = line[1:].strip().decode("ascii", "replace")
                    if oid in wanted and oid not in got:
                        got.add(oid)
                        published(oid)
                elif line.startswith(b"=ok "):
                    self._source.counters.add_bytes(int(line[4:]))
                    self._source.counters.add_blob_fetch(len(got))
                    self._give_back(child)
                    return got
                elif line.startswith(b"=error "):
                    self._give_back(child)
                    text = line[7:].decode("utf-8", "replace").strip()[:MAX_ERROR_CHARS]
                    raise PartialFetch(got, SourceError(text))
                else:
                    raise ValueError(f"unexpected line {line[:40]!r}")
            raise ValueError(f"it exited ({child.wait()})")
        except (OSError, ValueError) as exc:
            self._stop(child)
            cause = SourceError(f"the fetch process failed: {exc}"[:MAX_ERROR_CHARS])
            raise PartialFetch(got, cause) from None

    def close(self) -> None:
        """Kill every child now (batches running in them fail); no new one is started. It is
        called on the trio loop, so it waits only for idle children (blocked on their stdin,
        they die at once); the thread of a running batch reaps its own when the batch fails."""
        with self._lock:
            self._closed = True
            idle = [child for child, _ in self._idle]
            busy = self._children.difference(idle)
        for child in busy:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
        for child in idle:
            self._stop(child)

    def _take_child(self) -> subprocess.Popen[bytes]:
        with self._lock:
            if self._closed:
                raise SourceError("the mount is shutting down")
            while self._idle:
                child, since = self._idle.pop()
                if child.poll() is None and time.monotonic() - since < IDLE_SECONDS - REUSE_MARGIN:
                    return child
                self._children.discard(child)  # it left, or is about to: idle too long
                _end(child)
            child = self._start_child()  # under the lock: ``close`` sees every child
            self._children.add(child)
            return child

    def _give_back(self, child: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._idle.append((child, time.monotonic()))

    def _start_child(self) -> subprocess.Popen[bytes]:
        child = subprocess.Popen(
            [sys.executable, "-P", "-m", __name__],  # -P: nothing from the working directory
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        assert child.stdin is not None
        try:
            child.stdin.write(json.dumps(self._hello()).encode() + b"\n")
            child.stdin.flush()
        except OSError as exc:
            _end(child)
            raise SourceError(f"the fetch process did not start: {exc}") from None
        return child

    def _hello(self) -> dict[str, Any]:
        source = self._source
        settings = source.settings
        return {
            "parent": os.getpid(),
            "source": {
                "transport": source.spec.transport,
                "url": source.spec.url,
                "display": source.spec.display,
            },
            "object_format": source.object_format,
            "temp_dir": str(settings.temp_dir),
            "snapshots": str(settings.snapshots_dir),
            "cas": str(settings.cas_dir),
            "credentials": source.credentials.handover(),
            "log_file": _log_file(),
            "io_timeout": settings.io_timeout,
            "idle_seconds": IDLE_SECONDS,
        }

    def _stop(self, child: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._children.discard(child)
            self._idle = [(other, since) for other, since in self._idle if other is not child]
        _end(child)


def _end(child: subprocess.Popen[bytes]) -> None:
    """Kill a child, reap it and close our ends of its pipes."""
    with contextlib.suppress(ProcessLookupError):
        child.kill()
    child.wait()
    for pipe in (child.stdin, child.stdout):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


def _log_file() -> str | None:
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            return handler.baseFilename
    return None


# -- the child -----------------------------------------------------------------------------


def _serve(hello: Mapping[str, Any], requests: IO[bytes], replies: IO[bytes]) -> None:
    described = hello["source"]
    spec = GitSourceSpec(described["transport"], described["url"], described["display"])
    counters = FetchCounters()
    settings = SourceSettings(
        ref=None,
        cas_dir=Path(hello["cas"]),
        snapshots_dir=Path(hello["snapshots"]),
        temp_dir=Path(hello["temp_dir"]),
        credentials=CredentialProvider.from_handover(hello["credentials"]),
        counters=counters,
        io_timeout=hello["io_timeout"],
    )
    source = GitRemote(spec, settings)
    source.object_format = hello["object_format"]

    def published(oid: str) -> None:
        replies.write(b"+" + oid.encode("ascii") + b"\n")
        replies.flush()

    for line in requests:
        activity.busy = True
        wanted = json.loads(line)["wanted"]
        before = counters.bytes_received
        try:
            source.fetch_blobs(wanted, published)
        except SourceError as exc:
            reply = "=error " + " ".join(str(exc).split())[:MAX_ERROR_CHARS]
        except Exception:
            log.exception("fetching %d blob(s) failed", len(wanted))
            reply = "=error internal error in the fetch process (see the log)"
        else:
            reply = f"=ok {counters.bytes_received - before}"
        replies.write(reply.encode() + b"\n")
        replies.flush()
        activity.busy, activity.since = False, time.monotonic()


class _Activity:
    """Whether the child is running a batch, and since when it has been idle."""

    busy = False
    since = time.monotonic()


activity = _Activity()


def _watch(parent: int, idle_seconds: float) -> None:
    """A watchdog thread: the child must not outlive the mount (its stdin closes then too,
    but a batch may be running), and it gives its memory back after ``idle_seconds`` with no
    batch (the parent starts another when needed, and never hands a batch to one that old)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
            if not activity.busy and time.monotonic() - activity.since > idle_seconds:
                os._exit(0)
        os._exit(1)

    threading.Thread(target=watch, name="artifactfs-watchdog", daemon=True).start()


def main() -> None:
    # the worker blocks these until its loop handles them; we inherited the mask
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
    hello = json.loads(sys.stdin.buffer.readline() or b"{}")
    if "parent" not in hello:
        sys.exit("artifactfs: this is a helper of the mount process; it is not run by hand")
    _watch(hello["parent"], hello["idle_seconds"])
    socket.setdefaulttimeout(hello.get("io_timeout"))  # a stalled origin fails the batch
    from ...logs import configure

    log_file = hello.get("log_file")
    configure(Path(log_file) if log_file else None, 0)
    _serve(hello, sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    main()
