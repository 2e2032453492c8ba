"""Logging for a mount worker: a log file under the state home, and stderr for people.

stderr shows warnings and errors as ``artifactfs: <message>`` (INFO with ``-v``, DEBUG with
``-vv``); the file keeps INFO and above with timestamps. Messages never contain credentials:
sources are logged by their redacted display form, and as a last line of defence the
formatters mask any ``scheme://user:secret@`` in the whole formatted record, tracebacks
included.

Logging never raises and never floods. A handler that cannot write (a full disk) drops the
record silently instead of printing Python's "--- Logging error ---" and a traceback to
stderr for every record; and a warning or error of the same kind (logger and message
template) is written at most ``BURST`` times a minute, the next one that is written saying how
many were left out. A walk that fails on thousands of files costs a few lines, not megabytes.
"""

from __future__ import annotations

import errno
import logging
import re
import sys
import time
from pathlib import Path

from .redact import mask_userinfo


class _MaskingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return mask_userinfo(super().format(record))


BURST = 20
WINDOW_SECONDS = 60.0


class RateLimit(logging.Filter):
    """Let ``BURST`` warnings or errors of one kind through per ``WINDOW_SECONDS``."""

    def __init__(self, burst: int = BURST, window: float = WINDOW_SECONDS) -> None:
        super().__init__()
        self._burst = burst
        self._window = window
        self._kinds: dict[tuple[str, str], tuple[float, int, int]] = {}
        """(logger, template) -> (window start, written, left out)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Decided once per record, however many handlers share this filter."""
        decided = getattr(record, "_rate_limited", None)
        if decided is None:
            decided = record._rate_limited = self._decide(record)
        return bool(decided)

    def _decide(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, str(record.msg))
        now = time.monotonic()
        start, written, left_out = self._kinds.get(key, (now, 0, 0))
        if now - start > self._window:
            if left_out:
                record.msg = f"{record.msg} [and {left_out} more like it, not logged]"
            start, written, left_out = now, 0, 0
        if written >= self._burst:
            self._kinds[key] = (start, written, left_out + 1)
            return False
        self._kinds[key] = (start, written + 1, left_out)
        return True


_INTERRUPTED = re.compile(r"^fuse_\w+\(\): fuse_reply_\* failed with No such file or directory$")


class SessionGone(logging.Filter):
    """pyfuse3's reports of what the kernel made moot, which are not errors of ours:

    - a kernel-cache notification that failed because the FUSE session is closed already
      (EBADF): a refresh queues one per name of the old root, and an unmount right after it
      leaves them moot. pyfuse3 logs each with a traceback: dropped;
    - a reply to a request the kernel no longer has (ENOENT from ``fuse_reply_*``): the
      request was interrupted, its caller killed or gone, while we were answering it (a
      reader killed during a stalled read). Kept, as INFO.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("pyfuse3"):
            return True
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, OSError) and error.errno == errno.EBADF:
            return "invalidate" not in str(record.msg)
        if record.levelno > logging.INFO and _INTERRUPTED.match(record.getMessage()):
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def configure(log_file: Path | None, verbosity: int) -> None:
    """Route the ``artifactfs`` loggers to stderr and ``log_file`` (verbosity: 0, 1 or 2)."""
    logging.raiseExceptions = False  # a record that cannot be written is dropped, silently
    root = logging.getLogger()
    root.handlers.clear()
    limit = RateLimit()
    gone = SessionGone()
    root.setLevel(logging.DEBUG if verbosity >= 2 else logging.INFO)

    to_stderr = logging.StreamHandler(sys.stderr)
    to_stderr.setLevel((logging.WARNING, logging.INFO, logging.DEBUG)[min(verbosity, 2)])
    to_stderr.setFormatter(_MaskingFormatter("artifactfs: %(message)s"))
    to_stderr.addFilter(gone)
    to_stderr.addFilter(limit)
    root.addHandler(to_stderr)

    if log_file is not None:
        to_file = logging.FileHandler(log_file, encoding="utf-8")
        to_file.setFormatter(
            _MaskingFormatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
        )
        to_file.addFilter(gone)
        to_file.addFilter(limit)
        root.addHandler(to_file)
    # third-party chatter stays out of stderr unless debugging
    for noisy in ("dulwich", "urllib3", "pyfuse3"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbosity >= 2 else logging.ERROR)
