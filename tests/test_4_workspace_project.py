"""A project's own test suite run from a writable mount: pytest imports the package, writes
its bytecode (``__pycache__``) and its cache (``.pytest_cache``) into the mount, a failing test
is reported as failing, and git sees exactly what the run left behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers.gitrepos import make_repo
from tests.helpers.mounts import mounted
from tests.helpers.servers import GitDaemon

PROJECT = {
    ".gitignore": b"__pycache__/\n",
    "pyproject.toml": b'[project]\nname = "calc"\nversion = "0"\n',
    "calc/__init__.py": b"def add(a, b):\n    return a + b\n",
    "calc/text.py": b"def shout(s):\n    return s.upper() + '!'\n",
    "tests/test_calc.py": (
        b"from calc import add\nfrom calc.text import shout\n\n"
        b"def test_add():\n    assert add(2, 3) == 5\n\n"
        b"def test_shout():\n    assert shout('hi') == 'HI!'\n"
    ),
}


def run_pytest(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "tests"],
        cwd=tree, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_a_projects_suite_runs_and_writes_its_caches(
    daemon: GitDaemon, repos: Path, mnt: Path, home: Path
) -> None:
    make_repo(repos, "calc.git", PROJECT)
    with mounted(daemon.url("calc.git"), mnt, home):
        first = run_pytest(mnt)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "2 passed" in first.stdout
        compiled = sorted(p.name for p in (mnt / "calc" / "__pycache__").iterdir())
        assert [name.split(".")[0] for name in compiled] == ["__init__", "text"]
        assert (mnt / ".pytest_cache" / "v").is_dir()

        with open(mnt / "calc" / "__init__.py", "a") as out:  # break it: the suite says so
            out.write("\ndef add(a, b):\n    return a - b\n")
        second = run_pytest(mnt)
        assert second.returncode == 1 and "1 failed, 1 passed" in second.stdout, second.stdout

        status = subprocess.run(["git", "status", "--porcelain"], cwd=mnt, capture_output=True,
                                text=True, check=True).stdout  # fmt: skip
        # __pycache__ is ignored by the project, .pytest_cache by its own .gitignore: as in a
        # checkout, only the edit shows
        assert status == " M calc/__init__.py\n"
