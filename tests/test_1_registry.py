"""The daemon's registry: schema migrations of registries written by older versions."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from artifactfs.daemon.registry import SCHEMA_VERSION, Registry
from artifactfs.errors import UserError

BEFORE_ALLOW_OTHER = """
CREATE TABLE repos (
    name TEXT PRIMARY KEY, source TEXT NOT NULL, ref TEXT, mountpoint TEXT NOT NULL UNIQUE,
    token_file TEXT, wanted INTEGER NOT NULL, state TEXT NOT NULL, error TEXT, commit_id TEXT,
    files INTEGER, bytes_fetched INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
INSERT INTO repos (name, source, ref, mountpoint, token_file, wanted, state, commit_id, files,
                   created_at, updated_at)
VALUES ('old', 'git://example.com/old.git', NULL, '/mnt/old', NULL, 1, 'ready', 'abc', 3, 1, 1);
"""


def _version(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])


def test_a_registry_from_before_allow_other_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript(BEFORE_ALLOW_OTHER)
    registry = Registry(path)
    try:
        old = registry.get("old")
        assert old is not None
        assert (old.allow_other, old.state, old.commit, old.files) == (False, "ready", "abc", 3)
        assert old.public()["allow_other"] is False
        assert (old.depth, old.public()["depth"]) == (1, 1)
        registry.add(
            "new", "git://example.com/new.git", None, "/mnt/new", None, allow_other=True, depth=7
        )
        new = registry.get("new")
        assert new is not None and new.allow_other and new.public()["allow_other"] is True
        assert (new.depth, new.public()["depth"]) == (7, 7)
    finally:
        registry.close()
    assert _version(path) == SCHEMA_VERSION
    reopened = Registry(path)  # nothing left to migrate
    try:
        assert [(r.name, r.allow_other) for r in reopened.all()] == [("new", True), ("old", False)]
    finally:
        reopened.close()


def test_a_new_registry_starts_at_the_current_version(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite"
    Registry(path).close()
    assert _version(path) == SCHEMA_VERSION


def test_a_registry_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite"
    Registry(path).close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(UserError, match="written by a newer artifactfs"):
        Registry(path)
    assert _version(path) == SCHEMA_VERSION + 1  # left as it was


def test_a_dead_worker_is_started_again_after_half_a_second_doubling_to_thirty() -> None:
    from artifactfs.daemon.supervisor import restart_delay

    assert [restart_delay(n) for n in range(9)] == [0.5, 0.5, 1, 2, 4, 8, 16, 30, 30]


@pytest.mark.parametrize("given", [1, 3, "12", " 5 ", 1_000_000])
def test_a_depth_is_a_whole_number_of_commits(given: object) -> None:
    from artifactfs.sources.spec import check_depth

    assert check_depth(given) == int(str(given))


@pytest.mark.parametrize("given", [0, -1, "0", "abc", "", "2.5", 1_000_001, True, None, 2.0, "٣"])
def test_a_bad_depth_is_refused(given: object) -> None:
    from artifactfs.sources.spec import check_depth

    with pytest.raises(UserError, match=r"^--depth must be a whole number from 1 to 1000000"):
        check_depth(given)
