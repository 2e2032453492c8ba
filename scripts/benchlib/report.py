"""The markdown the benchmarks print and write into ``docs/benchmarks.md``: number formats,
table rows, the description of the machine, and the replacement of one benchmark's section
between its markers (every benchmark owns one section; the rest of the file is prose)."""

from __future__ import annotations

import contextlib
import datetime
import platform
import re
import statistics
import subprocess
from collections.abc import Sequence
from pathlib import Path

from .paths import DOC, ROOT

TIMES = "\u00d7"


def ms(seconds: float) -> str:
    """Milliseconds, as the tables show them."""
    return f"{seconds * 1000:,.0f}"


def met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def row(label: str, values: Sequence[float]) -> str:
    """``| label | median | min | max |`` in milliseconds."""
    return f"| {label} | {ms(statistics.median(values))} | {ms(min(values))} | {ms(max(values))} |"


def ratio_line(label: str, value: float, goal: float) -> str:
    """``| label | value | goal | met |``, value and goal as ratios."""
    return f"| {label} | {value:.2f}{TIMES} | ≤ {goal}{TIMES} | {met(value <= goal)} |"


def first_line(command: Sequence[str]) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError:
        return "unknown"
    return (result.stdout.strip().splitlines() or ["unknown"])[0]


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    memory = "unknown"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    cpu = "unknown"
    with contextlib.suppress(OSError):
        models = re.findall(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = models[0] if models else cpu
    revision = first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    status = ["git", "-C", str(ROOT), "status", "--porcelain", "--", "artifactfs"]
    changed = first_line(status) != "unknown"  # any output: the package differs from HEAD
    return {
        "Date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "CPU": f"{first_line(['nproc'])} cores ({cpu})",
        "Memory": memory,
        "Kernel": platform.release(),
        "git": first_line(["git", "--version"]).removeprefix("git version "),
        "Python": platform.python_version(),
        "artifactfs": revision + (" with uncommitted changes" if changed else ""),
    }


def machine_lines() -> list[str]:
    """The ``Machine:`` list every results section starts with."""
    return ["Machine:", "", *(f"- {key}: {value}" for key, value in machine().items())]


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


_DOC_HEADER = "# Benchmarks\n\nRun `scripts/bench`; it rewrites the section below.\n\n"


def write_doc(results: str, start: str, end: str) -> None:
    """Replace the results section between the markers ``start`` and ``end`` of
    docs/benchmarks.md (appending it, or creating the file, if needed)."""
    section = f"{start}\n{results}{end}\n"
    text = DOC.read_text() if DOC.exists() else _DOC_HEADER
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end) + r"\n?", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _match: section, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    DOC.parent.mkdir(parents=True, exist_ok=True)
    temp = DOC.with_name(f".{DOC.name}.tmp")
    temp.write_text(text)
    temp.rename(DOC)
