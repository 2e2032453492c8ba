"""Where the benchmarks keep what they make once (``bench-work/``) and where they write their
results (``docs/benchmarks.md``): one place, so that every benchmark shares the caches."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
"""The repository root."""
WORK = ROOT / "bench-work"
"""Generated repositories, models and logs, kept between runs (ignored by git)."""
DOC = ROOT / "docs" / "benchmarks.md"
PYCACHE = WORK / "pycache"
"""Bytecode cache of the measured artifactfs processes: an installed program has one, and
``PYTHONDONTWRITEBYTECODE`` in the environment would otherwise make every start of the
editable install recompile it. The warm-up round fills it."""
