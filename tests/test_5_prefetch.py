"""``artifactfs prefetch`` through a real daemon: a repository's (or some paths') contents come
in a few large fetches, all of them, before anyone reads; ``--async`` returns at once and the
contents arrive all the same; bad input is one line and exit status 2."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

from tests.conftest import hub_env
from tests.helpers.daemons import running_daemon
from tests.helpers.gitrepos import Repo, make_repo
from tests.helpers.hub import HubServer
from tests.helpers.servers import GitDaemon
from tests.helpers.waiting import wait_for

FILES = {
    f"src/pkg{d}/mod{f}.py": f"# module {d}.{f}\n".encode() * (20 + f)
    for d in range(12)
    for f in range(25)
}
FILES.update({f"docs/page{i}.md": b"page %d\n" % i * 50 for i in range(20)})
FILES["data/big.bin"] = random.Random(18).randbytes(700 << 10)


def stored(home: Path, repo: Repo, names: list[str]) -> list[str]:
    return [
        name
        for name in names
        if (home / "cas" / "git-sha1" / repo.blob_id(name)[:2] / repo.blob_id(name)).exists()
    ]


def test_prefetch_fetches_everything_in_a_few_batches(
    daemon: GitDaemon, repos: Path, home: Path
) -> None:
    repo = make_repo(repos, "proj.git", FILES)
    with running_daemon(home) as artifactfs:
        artifactfs.ok("add-repo", "proj", daemon.url("proj.git"))
        daemon.clear_trace()
        out = artifactfs.ok("prefetch", "proj", "src")
        src = [name for name in FILES if name.startswith("src/")]
        assert f"prefetched {len(src)} file(s) of proj" in out, out
        assert stored(home, repo, src) == src
        assert stored(home, repo, ["data/big.bin"]) == []  # only what was asked for
        fetches = daemon.fetch_commands()
        print(f"{len(src)} files in {fetches} fetches")
        assert fetches <= len(src) // 10, fetches
        assert "prefetched 21 file(s)" in artifactfs.ok("prefetch", "proj", "docs", "data/big.bin")
        daemon.clear_trace()
        mnt = home / "mnt" / "proj"
        for name, content in FILES.items():  # everything is local now: nothing is fetched
            assert (mnt / name).read_bytes() == content
        assert daemon.fetch_commands() == 0


def test_prefetch_async_returns_at_once_and_the_worker_gets_it_all(
    daemon: GitDaemon, repos: Path, home: Path
) -> None:
    repo = make_repo(repos, "proj.git", FILES)
    with running_daemon(home) as artifactfs:
        artifactfs.ok("add-repo", "proj", daemon.url("proj.git"))
        out = artifactfs.ok("prefetch", "proj", "--async")
        assert "prefetching proj in the background" in out, out
        names = list(FILES)
        wait_for(lambda: stored(home, repo, names) == names, 60, "every blob to be stored")
        log = home / "run" / "logs" / "prefetch-proj.log"
        wait_for(lambda: log.exists() and "prefetched" in log.read_text(), 60, "its report")


def test_prefetch_bad_input_is_one_line_and_exit_2(
    daemon: GitDaemon, repos: Path, home: Path
) -> None:
    make_repo(repos, "proj.git", {"a.txt": b"a\n"})
    with running_daemon(home) as artifactfs:
        artifactfs.ok("add-repo", "proj", daemon.url("proj.git"))
        for args in (
            ("prefetch", "nosuch"),
            ("prefetch", "proj", "no/such/file"),
            ("prefetch", "proj", "../../etc"),
        ):
            result = artifactfs.cli(*args)
            assert result.returncode == 2, (args, result)
            assert len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)
        artifactfs.ok("unmount", "proj")
        result = artifactfs.cli("prefetch", "proj")
        assert result.returncode == 2 and "not mounted" in result.stderr, result


def test_prefetch_a_hub_repository_keeps_every_file_whole(
    hub: HubServer, tmp_path: Path, home: Path
) -> None:
    rng = random.Random(19)
    files = {"weights/a.bin": rng.randbytes(3 << 20), "config.json": b'{"a": 1}\n'}
    hub.create_repo("org/pre", files)
    with running_daemon(home, env=hub_env(hub, tmp_path)) as artifactfs:
        artifactfs.ok("add-repo", "pre", "hf://org/pre")
        out = artifactfs.ok("prefetch", "pre")
        assert "prefetched 2 file(s) of pre" in out, out
        digest = hashlib.sha256(files["weights/a.bin"]).hexdigest()
        assert (home / "cas" / "sha256" / digest[:2] / digest).exists()
        served = hub.total_bytes_served()
        for name, content in files.items():
            assert (home / "mnt" / "pre" / name).read_bytes() == content
        assert hub.total_bytes_served() == served  # all of it was local
