"""A job's time with and without its access profile replayed at ``add-repo``.

The job reads 850 of a generated 5,000-file repository's files (served by ``git daemon`` on
loopback), in a fixed order, as a test suite would import them. Each round, on a fresh state
home with a daemon of its own:

- *warm*: the job once (filling the store), the repository remounted (the kernel forgets its
  pages), then the job, timed;
- *cold*: ``add-repo`` (ready), then the job, timed;
- *profile*: ``add-repo --profile FILE`` (the profile recorded once by ``mount
  --record-profile``), which returns when the profile's files are local, then the job, timed;
  and the add itself.

The goal (issue 15): the job with the profile in at most 1.1 x its time on a warm store.
Prints medians; writes nothing (docs/architecture.md quotes a run).

Usage (from the root): .venv/bin/python -m scripts.bench_profile [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.helpers.daemons import running_daemon
from tests.helpers.gitrepos import Content, make_repo
from tests.helpers.mounts import mounted
from tests.helpers.servers import GitDaemon

JOB = (
    "import os, sys\nfor n in sys.argv[2:]:\n    open(os.path.join(sys.argv[1], n), 'rb').read()\n"
)


def files() -> dict[str, Content]:
    return {
        f"pkg{d:03}/mod{f:02}.py": f"# {d} {f}\nVALUE = {d}\n".encode() * (30 + f * 3)
        for d in range(100)
        for f in range(50)
    }


JOB_FILES = [f"pkg{d:03}/mod{f:02}.py" for d in range(0, 100, 3) for f in range(0, 50, 2)]


def job(mountpoint: Path) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", JOB, str(mountpoint), *JOB_FILES], check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    repos = base / "repos"
    repos.mkdir()
    make_repo(repos, "r.git", files())
    server = GitDaemon(repos)
    profile = base / "job.profile"
    results: dict[str, list[float]] = {"warm": [], "cold": [], "profile": [], "add --profile": []}
    try:
        with mounted(server.url("r.git"), base / "rec", base / "rec-home",
                     "--record-profile", str(profile)):  # fmt: skip
            job(base / "rec")
        for run in range(args.runs):
            home = base / f"warm-{run}"
            with running_daemon(home) as daemon:
                daemon.ok("add-repo", "r", server.url("r.git"))
                job(home / "mnt" / "r")
                daemon.ok("unmount", "r")
                daemon.ok("remount", "r")
                daemon.wait_state("r", "ready")
                results["warm"].append(job(home / "mnt" / "r"))
            home = base / f"cold-{run}"
            with running_daemon(home) as daemon:
                daemon.ok("add-repo", "r", server.url("r.git"))
                results["cold"].append(job(home / "mnt" / "r"))
            home = base / f"profile-{run}"
            with running_daemon(home) as daemon:
                started = time.perf_counter()
                daemon.ok("add-repo", "r", server.url("r.git"), "--profile", str(profile))
                results["add --profile"].append(time.perf_counter() - started)
                results["profile"].append(job(home / "mnt" / "r"))
    finally:
        server.stop()
    for name, values in results.items():
        rounded = [round(v * 1000) for v in values]
        print(f"{name:>14}: median {statistics.median(values) * 1000:.0f} ms {rounded}")
    ratio = statistics.median(results["profile"]) / statistics.median(results["warm"])
    print(f"job with its profile / job on a warm store: {ratio:.2f} (goal <= 1.1)")


if __name__ == "__main__":
    main()
