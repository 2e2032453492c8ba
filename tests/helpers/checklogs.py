"""After every test, read the logs of the artifactfs processes it ran and fail on surprises.

Why: a mount answers EIO for any failure behind the gate, a crash included, so a test that
expects EIO (or a refusal, or a retry) passes over a bug unless someone reads the logs. This
reads them for every test, and a test declares the lines it provokes on purpose.

What is read (every file under the test's ``tmp_path``, never inside a mount point, plus any
directory a test hands to ``LogCheck.watch`` or ``LogCheck.collect``):

- ``run/logs/*.log`` of a state home (mount workers, the daemon, fetch children; format
  ``asctime pid LEVEL logger: message``). A record is a line with that prefix and the lines
  that follow it without one (a traceback). Suspicious: a record at WARNING, ERROR or
  CRITICAL, and any record or stray line holding a traceback or ``--- Logging error ---``.
- ``*.stderr``: a worker's ``run/logs/worker-NAME.stderr``, the foreground mount's
  ``<mountpoint>.stderr``, the daemon's ``<home>-daemon.stderr``, the commands' (``status``,
  ``add-repo``, ...) ``<home>-cli.stderr`` (tests/helpers/mounts.py, daemons.py). These
  repeat every warning of the log file as ``artifactfs: message`` (and a command's refusal is
  asserted by its test), so those lines alone are *not* suspicious here (the log file already
  judged them, with their level). What only stderr shows is suspicious:
  a traceback (an uncaught exception, an exception nobody could log) and Python's
  ``--- Logging error ---``. An ``artifactfs: message`` line followed by a traceback is the
  echo of a ``log.exception`` when a log file holds that same record (then the log file
  judges it); otherwise its traceback is judged alone, so that declaring a warning never
  silences a crash printed right after it.

A declaration, ``expect_log(r"regex", level="ERROR", required=False)``, silences every
suspicious entry whose *message* it matches (``re.search`` on the text after the
``logger:``/``artifactfs:`` prefix, a traceback included: never the logger name, which may be
renamed). ``level`` narrows it to records of that level; stderr entries have no level and
match whatever the level. An expected line may not come (many are racy): that is fine unless
``required=True``, then the test fails if no entry matched.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

LEVELS = ("WARNING", "ERROR", "CRITICAL")
TRACEBACK = "Traceback (most recent call last):"
LOGGING_ERROR = "--- Logging error ---"
STDERR_PREFIX = "artifactfs: "
CHAINED = (
    "During handling of the above exception, another exception occurred:",
    "The above exception was the direct cause of the following exception:",
)
_RECORD = re.compile(
    r"(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (?P<pid>\d+) (?P<level>[A-Z]+) "
    r"(?P<logger>\S+?): (?P<message>.*)"
)
SHOWN_LINES = 12
"""Lines shown of each end of a long entry in a failure (a traceback's cause is at its end)."""


class ExpectLog(Protocol):
    """The ``expect_log`` fixture: ``expect_log(r"message regex", level=..., required=...)``."""

    def __call__(
        self, pattern: str, *, level: str | None = None, required: bool = False
    ) -> None: ...


@dataclass(frozen=True)
class Entry:
    """One log record, or one stderr block, as the check judges it."""

    path: Path
    line: int
    """1-based number of its first line."""
    level: str | None
    """The record's level; None for stderr and for stray lines of a log file."""
    message: str
    """Its text after the prefix, continuation lines (a traceback) included."""
    lines: tuple[str, ...]
    from_stderr: bool = False

    @property
    def subject(self) -> str:
        """What a declaration is matched against: the message, but only the traceback of a
        stderr block that is not a log record's echo (see the module docstring)."""
        if self.from_stderr and self.lines[0].startswith(STDERR_PREFIX) and len(self.lines) > 1:
            return "\n".join(self.lines[1:])
        return self.message

    @property
    def suspicious(self) -> bool:
        text = "\n".join(self.lines)
        return self.level in LEVELS or TRACEBACK in text or LOGGING_ERROR in text

    def show(self) -> str:
        shown = list(self.lines)
        if len(shown) > 2 * SHOWN_LINES + 1:
            cut = len(shown) - 2 * SHOWN_LINES
            shown[SHOWN_LINES:-SHOWN_LINES] = [f"[... {cut} lines]"]
        return f"{self.path}:{self.line}:\n" + "\n".join(f"    {line}" for line in shown)


@dataclass(frozen=True)
class Expected:
    """A line a test provokes on purpose."""

    pattern: re.Pattern[str]
    level: str | None = None
    required: bool = False

    def matches(self, entry: Entry) -> bool:
        if self.level is not None and entry.level is not None and entry.level != self.level:
            return False
        return self.pattern.search(entry.subject) is not None

    def describe(self) -> str:
        return f"{self.pattern.pattern!r}" + (f" at {self.level}" if self.level else "")


def log_entries(path: Path) -> Iterator[Entry]:
    """The records of a log file (``artifactfs/logs.py`` format)."""
    start, level, message, lines = 1, None, "", []
    for number, line in enumerate(_lines(path), 1):
        record = _RECORD.fullmatch(line)
        if record is None and lines:
            lines.append(line)
            message += "\n" + line
            continue
        if lines:
            yield Entry(path, start, level, message, tuple(lines))
        start, lines = number, [line]
        if record is None:  # a stray line before the first record
            level, message = None, line
        else:
            level, message = record["level"], record["message"]
    if lines:
        yield Entry(path, start, level, message, tuple(lines))


def stderr_entries(path: Path) -> Iterator[Entry]:
    """The blocks of a stderr file: each ``artifactfs: `` line, ``--- Logging error ---`` or
    traceback starts one, unless the traceback continues the block (it follows the block's
    first line, or an exception it was raised while handling)."""
    start, lines = 1, []
    for number, line in enumerate(_lines(path), 1):
        starts = line.startswith(STDERR_PREFIX) or line == LOGGING_ERROR
        if line == TRACEBACK:
            before = [kept for kept in lines if kept.strip()]
            continues = len(before) == 1 or (bool(before) and before[-1] in CHAINED)
            starts = not continues
        if lines and starts:
            yield _stderr_entry(path, start, lines)
            lines = []
        if not lines:
            start = number
        lines.append(line)
    if lines:
        yield _stderr_entry(path, start, lines)


def _stderr_entry(path: Path, start: int, lines: list[str]) -> Entry:
    message = "\n".join(lines).removeprefix(STDERR_PREFIX)
    return Entry(path, start, None, message, tuple(lines), from_stderr=True)


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8", errors="replace").splitlines()


def entries(path: Path) -> Iterator[Entry]:
    """The entries of one file, read the way its name says it was written."""
    if path.suffix == ".stderr":
        return stderr_entries(path)
    return log_entries(path)


def is_log_file(path: Path) -> bool:
    return path.suffix == ".stderr" or (
        path.suffix == ".log" and path.parent.name == "logs" and path.parent.parent.name == "run"
    )


def log_files(root: Path) -> list[Path]:
    """Every artifactfs log and stderr file under ``root``, not looking inside mount points
    (a leftover mount must not hang the check, nor its files count)."""
    with open("/proc/self/mountinfo") as table:
        mountpoints = {line.split()[4] for line in table}
    found = []
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = [
            name for name in subdirectories if os.path.join(directory, name) not in mountpoints
        ]
        found.extend(Path(directory, name) for name in files)
    return sorted(path for path in found if is_log_file(path))


def judge(found: Iterable[Entry], expected: Iterable[Expected]) -> list[str]:
    """What is wrong: each unexpected suspicious entry, each required line that never came."""
    expected, found = list(expected), list(found)
    logged = {entry.message for entry in found if not entry.from_stderr}
    matched: set[int] = set()
    problems = []
    for entry in found:
        if not entry.suspicious or (entry.from_stderr and entry.message in logged):
            continue
        hits = [i for i, each in enumerate(expected) if each.matches(entry)]
        matched.update(hits)
        if not hits:
            problems.append(entry.show())
    for i, each in enumerate(expected):
        if each.required and i not in matched:
            problems.append(f"an expected line never came: {each.describe()}")
    return problems


@dataclass
class LogCheck:
    """The log check of one test: where to look, and what the test declared."""

    roots: list[Path]
    expected: list[Expected] = field(default_factory=list)
    collected: list[Entry] = field(default_factory=list)

    def expect(self, pattern: str, *, level: str | None = None, required: bool = False) -> None:
        """Declare a line this test provokes on purpose (see the module docstring)."""
        if level is not None and level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, not {level!r}")
        self.expected.append(Expected(re.compile(pattern), level, required))

    def watch(self, root: Path) -> None:
        """Read this directory too at the end of the test."""
        self.roots.append(root)

    def collect(self, root: Path) -> None:
        """Read this directory now, for a fixture that deletes it before the test ends."""
        for path in log_files(root):
            self.collected.extend(entries(path))

    def problems(self) -> list[str]:
        found = list(self.collected)
        for root in self.roots:
            for path in log_files(root):
                found.extend(entries(path))
        return judge(found, self.expected)

    def report(self) -> str | None:
        """None if the logs hold only what the test declared; else what to show."""
        problems = self.problems()
        if not problems:
            return None
        return (
            "unexpected lines in the artifactfs logs (a line the test provokes on purpose is "
            "declared with expect_log, tests/helpers/checklogs.py):\n" + "\n".join(problems)
        )
