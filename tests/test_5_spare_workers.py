"""Spare workers (daemon/spares.py): the daemon keeps a worker started ahead, imports done,
and ``add-repo`` hands it the mount; a dead spare costs only the head start."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.helpers.checklogs import ExpectLog
from tests.helpers.daemons import running_daemon, spare_pids, worker_pids
from tests.helpers.gitrepos import Repo
from tests.helpers.mounts import run_cli
from tests.helpers.servers import GitDaemon
from tests.helpers.waiting import wait_for


def one_spare(home: Path) -> int:
    wait_for(lambda: len(spare_pids(home)) == 1, 20, "one spare worker")
    (pid,) = spare_pids(home)
    return pid


def test_add_repo_is_served_by_the_spare_started_ahead(
    daemon: GitDaemon, sample: Repo, home: Path
) -> None:
    with running_daemon(home) as artifactfs:
        spare = one_spare(home)
        artifactfs.ok("add-repo", "sample", daemon.url("sample.git"))
        assert worker_pids(home) == [spare]  # it shows the command line of the worker it is
        assert (home / "mnt" / "sample" / "README.md").read_bytes() == b"# sample\n"
        assert one_spare(home) != spare  # the next one, for the next add-repo
        artifactfs.ok("add-repo", "other", daemon.url("sample.git"))
        assert len(worker_pids(home)) == 2
    assert spare_pids(home) == [] and worker_pids(home) == []


def test_a_dead_spare_means_a_worker_started_the_usual_way(
    daemon: GitDaemon, sample: Repo, home: Path, expect_log: ExpectLog
) -> None:
    expect_log(r"^a spare worker exited by itself \(-9\)$", level="WARNING")  # if seen in time
    with running_daemon(home) as artifactfs:
        spare = one_spare(home)
        os.kill(spare, signal.SIGKILL)
        wait_for(lambda: spare not in spare_pids(home), 10, "the spare to die")
        artifactfs.ok("add-repo", "sample", daemon.url("sample.git"))
        assert (home / "mnt" / "sample" / "README.md").read_bytes() == b"# sample\n"
        (worker,) = worker_pids(home)
        assert worker != spare
    assert spare_pids(home) == [] and worker_pids(home) == []


def test_no_spares_when_asked_for_none(daemon: GitDaemon, sample: Repo, home: Path) -> None:
    with running_daemon(home, args=("--spare-workers", "0")) as artifactfs:
        artifactfs.ok("add-repo", "sample", daemon.url("sample.git"))
        assert (home / "mnt" / "sample" / "README.md").read_bytes() == b"# sample\n"
        assert spare_pids(home) == []


def test_a_bad_spare_count_is_one_line(home: Path) -> None:
    refused = run_cli("daemon", "--spare-workers", "99", home=home)
    assert refused.returncode == 2
    assert refused.stderr == "artifactfs: --spare-workers must be between 0 and 8\n"
