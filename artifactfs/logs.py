"""Logging for a mount worker: a log file under the state home, and stderr for people.

stderr shows warnings and errors as ``artifactfs: <message>`` (INFO with ``-v``, DEBUG with
``-vv``); the file keeps INFO and above with timestamps. Messages never contain credentials:
sources are logged by their redacted display form, and as a last line of defence the
formatters mask any ``scheme://user:secret@`` in the whole formatted record, tracebacks
included.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from .redact import mask_userinfo


class _MaskingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return mask_userinfo(super().format(record))


def configure(log_file: Path | None, verbosity: int) -> None:
    """Route the ``artifactfs`` loggers to stderr and ``log_file`` (verbosity: 0, 1 or 2)."""
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(logging.DEBUG if verbosity >= 2 else logging.INFO)

    to_stderr = logging.StreamHandler(sys.stderr)
    to_stderr.setLevel((logging.WARNING, logging.INFO, logging.DEBUG)[min(verbosity, 2)])
    to_stderr.setFormatter(_MaskingFormatter("artifactfs: %(message)s"))
    root.addHandler(to_stderr)

    if log_file is not None:
        to_file = logging.FileHandler(log_file, encoding="utf-8")
        to_file.setFormatter(
            _MaskingFormatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
        )
        root.addHandler(to_file)
    # third-party chatter stays out of stderr unless debugging
    for noisy in ("dulwich", "urllib3", "pyfuse3"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbosity >= 2 else logging.ERROR)
