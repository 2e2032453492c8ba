"""Logging for a mount worker: a log file under the state home, and stderr for people.

stderr shows warnings and errors as ``artifactfs: <message>`` (INFO and DEBUG with
``--verbose``/``--debug``); the file keeps INFO and above with timestamps. Messages never
contain credentials: sources are logged by their redacted display form, and as a last line of
defence any ``scheme://user:secret@`` in a message is masked.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from .redact import mask_userinfo


class _MaskCredentials(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_userinfo(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def configure(log_file: Path | None, verbosity: int) -> None:
    """Route the ``artifactfs`` loggers to stderr and ``log_file`` (verbosity: 0, 1 or 2)."""
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(logging.DEBUG if verbosity >= 2 else logging.INFO)
    mask = _MaskCredentials()

    to_stderr = logging.StreamHandler(sys.stderr)
    to_stderr.setLevel((logging.WARNING, logging.INFO, logging.DEBUG)[min(verbosity, 2)])
    to_stderr.setFormatter(logging.Formatter("artifactfs: %(message)s"))
    to_stderr.addFilter(mask)
    root.addHandler(to_stderr)

    if log_file is not None:
        to_file = logging.FileHandler(log_file, encoding="utf-8")
        to_file.setFormatter(
            logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
        )
        to_file.addFilter(mask)
        root.addHandler(to_file)
    # third-party chatter stays out of stderr unless debugging
    for noisy in ("dulwich", "urllib3", "pyfuse3"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbosity >= 2 else logging.ERROR)
