"""The store's lifecycle through a real daemon: ``cache du`` attributes bytes to repositories,
``cache gc`` removes exactly what no registered repository references (while reads and
publishes go on), ``pin`` keeps blobs through a small cap and fetches what is missing,
``unpin`` lets them go; bad input is one line and exit status 2."""

from __future__ import annotations

import json
import os
import random
import threading
from pathlib import Path

from tests.helpers.daemons import running_daemon
from tests.helpers.gitrepos import Repo, make_repo
from tests.helpers.mounts import mounted, run_cli
from tests.helpers.servers import GitDaemon
from tests.helpers.waiting import wait_for

KiB = 1 << 10
SHARED = b"shared by a and c\n" * 1000


def blob_path(home: Path, oid: str) -> Path:
    return home / "cas" / "git-sha1" / oid[:2] / oid


def present(home: Path, repo: Repo, names: list[str]) -> list[bool]:
    return [blob_path(home, repo.blob_id(name)).exists() for name in names]


def du(home: Path) -> dict[str, object]:
    result = run_cli("cache", "du", "--json", home=home)
    assert result.returncode == 0, result.stderr
    answer: dict[str, object] = json.loads(result.stdout)
    return answer


def read_all(mountpoint: Path, files: dict[str, bytes]) -> None:
    for name, content in files.items():
        assert (mountpoint / name).read_bytes() == content, name


def test_gc_removes_exactly_what_no_registered_repository_references(
    daemon: GitDaemon, repos: Path, home: Path, tmp_path: Path
) -> None:
    contents = {
        name: {f"{name}/only-{i}.txt": f"{name} {i}\n".encode() * 300 for i in range(5)}
        for name in ("a", "b", "c", "d")
    }
    contents["a"]["shared.txt"] = contents["c"]["shared.txt"] = SHARED
    made = {name: make_repo(repos, f"{name}.git", files) for name, files in contents.items()}
    loose = {f"loose/{i}.txt": os.urandom(2000) for i in range(40)}
    made_loose = make_repo(repos, "loose.git", loose)
    with running_daemon(home) as artifactfs:
        for name in contents:
            artifactfs.ok("add-repo", name, daemon.url(f"{name}.git"))
            read_all(home / "mnt" / name, contents[name])
        wait_for(  # workers record what they published within a few seconds
            lambda: (
                (usage := du(home))["repositories"]["a"]["bytes"] > 0  # type: ignore[index]
                and usage["repositories"]["d"]["bytes"] > 0  # type: ignore[index]
                and usage
            ),
            30,
            "cache du to see every repository",
        )
        usage = du(home)
        assert usage["shared"] == len(SHARED)
        sizes = {n: sum(len(c) for c in files.values()) for n, files in contents.items()}
        assert usage["repositories"] == {  # type: ignore[comparison-overlap]
            "a": {"bytes": sizes["a"], "unique": sizes["a"] - len(SHARED)},
            "b": {"bytes": sizes["b"], "unique": sizes["b"]},
            "c": {"bytes": sizes["c"], "unique": sizes["c"] - len(SHARED)},
            "d": {"bytes": sizes["d"], "unique": sizes["d"]},
        }
        artifactfs.ok("remove-repo", "b")
        artifactfs.ok("remove-repo", "c")
        # gc runs while a registered repository is read and a mount no daemon knows publishes
        errors: list[BaseException] = []

        def read_loose() -> None:
            try:
                with mounted(made_loose.path.as_uri(), tmp_path / "loose", home):
                    read_all(tmp_path / "loose", loose)
                    read_all(tmp_path / "loose", loose)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
                errors.append(exc)

        reader = threading.Thread(target=read_loose)
        reader.start()
        try:
            for _ in range(3):
                collected = run_cli("cache", "gc", home=home)
                assert collected.returncode == 0, collected.stderr
                read_all(home / "mnt" / "a", contents["a"])
                read_all(home / "mnt" / "d", contents["d"])
        finally:
            reader.join(120)
        assert not errors, errors
        assert all(present(home, made["a"], list(contents["a"])))
        assert all(present(home, made["d"], list(contents["d"])))
        assert present(home, made["c"], ["shared.txt"]) == [True]  # a still has it
        assert not any(present(home, made["b"], list(contents["b"])))
        assert not any(present(home, made["c"], [n for n in contents["c"] if "only" in n]))
        dry = run_cli("cache", "gc", "--dry-run", "--json", home=home)
        assert dry.returncode == 0 and json.loads(dry.stdout)["removed"] == 0, dry.stdout


def test_pins_hold_through_a_small_cap_and_unpin_releases_them(
    daemon: GitDaemon, repos: Path, home: Path
) -> None:
    rng = random.Random(17)
    files = {f"d{i:02}/f.bin": rng.randbytes(400 * KiB) for i in range(12)}
    files.update({f"keep/k{i}.bin": rng.randbytes(300 * KiB) for i in range(3)})
    kept = sorted(name for name in files if name.startswith("keep/"))
    repo = make_repo(repos, "big.git", files)
    with running_daemon(home, args=("--cache-max-size", "2M")) as artifactfs:
        artifactfs.ok("add-repo", "big", daemon.url("big.git"))
        pinned = artifactfs.ok("pin", "big", "keep")
        assert "pinned 3 file(s) of big" in pinned and "fetched 3 missing" in pinned, pinned
        assert all(present(home, repo, kept))  # fetched by pin itself
        mnt = home / "mnt" / "big"
        read_all(mnt, files)
        read_all(mnt, {name: files[name] for name in files if name not in kept})
        assert all(present(home, repo, kept))
        others = [name for name in files if name not in kept]
        assert not all(present(home, repo, others))  # the workers evicted under the cap
        status = json.loads(artifactfs.ok("status", "big", "--json"))[0]
        wait_for(
            lambda: (
                json.loads(artifactfs.ok("status", "big", "--json"))[0].get("pinned_bytes")
                == 900 * KiB
            ),
            30,
            "status to show the pinned bytes",
        )
        assert "big: 900.0 KiB pinned" in artifactfs.ok("status")
        usage = du(home)
        assert usage["pinned"] == 900 * KiB
        assert "unpinned 3 blob(s) of big" in artifactfs.ok("unpin", "big")
        evicted = run_cli("cache", "evict", "--to", "0", home=home)
        assert evicted.returncode == 0, evicted.stderr
        assert not any(present(home, repo, kept))
        read_all(mnt, {name: files[name] for name in kept})  # fetched again
        assert status["state"] == "ready"


def test_bad_cache_input_is_one_line_and_exit_2(
    daemon: GitDaemon, repos: Path, home: Path, mnt: Path
) -> None:
    make_repo(repos, "small.git", {"a.txt": b"a\n"})
    for args in (
        ("cache", "evict", "--to", "lots"),
        ("cache", "evict", "--to=-5M"),
        ("mount", daemon.url("small.git"), str(mnt), "--cache-max-size", "0"),
        ("daemon", "--cache-max-size", "ten gigs"),
    ):
        result = run_cli(*args, home=home)
        assert result.returncode == 2, (args, result)
        assert len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)
        assert "Traceback" not in result.stderr
    bad_env = run_cli(
        "mount", daemon.url("small.git"), str(mnt), home=home,
        env={"ARTIFACTFS_CACHE_MAX_SIZE": "huge"},
    )  # fmt: skip
    assert bad_env.returncode == 2 and "ARTIFACTFS_CACHE_MAX_SIZE" in bad_env.stderr
    with running_daemon(home) as artifactfs:
        artifactfs.ok("add-repo", "small", daemon.url("small.git"))
        for args in (
            ("pin", "nosuch"),
            ("pin", "small", "no/such/path"),
            ("unpin", "small"),  # nothing pinned
        ):
            result = artifactfs.cli(*args)
            assert result.returncode == 2, (args, result)
            assert len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)
