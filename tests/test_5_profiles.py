"""Access profiles: a job run on a mount with ``--record-profile`` leaves the paths it opened,
in order; ``add-repo --profile`` on a fresh home fetches them as soon as the tree is ready, and
the job then runs with no fetch at all; ``prefetch --profile`` does the same for a mounted
repository, skipping paths the commit does not have."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers.daemons import running_daemon
from tests.helpers.gitrepos import make_repo
from tests.helpers.mounts import mounted, run_cli
from tests.helpers.servers import GitDaemon
from tests.helpers.waiting import wait_for

FILES = {
    f"src/pkg{d}/mod{f}.py": f"# module {d}.{f}\nVALUE = {d * 100 + f}\n".encode() * (5 + f)
    for d in range(10)
    for f in range(20)
}
FILES.update({f"tests/test_{d}.py": f"from pkg{d} import mod1\n".encode() for d in range(10)})
FILES["README.md"] = b"# proj\n"
JOB_FILES = [
    "tests/test_3.py",
    "src/pkg3/mod1.py",
    "src/pkg3/mod7.py",
    "tests/test_8.py",
    *[f"src/pkg8/mod{f}.py" for f in range(12)],
    "README.md",
]
JOB = """
import os, sys
root = sys.argv[1]
for name in sys.argv[2:]:  # a test suite, as far as the file system can tell
    with open(os.path.join(root, name), "rb") as handle:
        sys.stdout.buffer.write(handle.read())
"""


def run_job(mountpoint: Path) -> bytes:
    done = subprocess.run(
        [sys.executable, "-c", JOB, str(mountpoint), *JOB_FILES],
        capture_output=True,
        check=True,
        timeout=60,
    )
    return done.stdout


def expected_output() -> bytes:
    return b"".join(FILES[name] for name in JOB_FILES)


def test_a_recorded_job_replays_with_no_fetch_on_a_fresh_home(
    daemon: GitDaemon, repos: Path, tmp_path: Path
) -> None:
    make_repo(repos, "proj.git", FILES)
    profile = tmp_path / "job.profile"
    recording_home = tmp_path / "home-recording"
    with mounted(daemon.url("proj.git"), tmp_path / "rec", recording_home,
                 "--record-profile", str(profile)):  # fmt: skip
        assert run_job(tmp_path / "rec") == expected_output()
        run_job(tmp_path / "rec")  # a second run adds nothing
    lines = profile.read_text().splitlines()
    assert lines[0].startswith("#") and lines[1:] == JOB_FILES

    home = tmp_path / "home"
    with running_daemon(home) as artifactfs:
        added = artifactfs.ok("add-repo", "proj", daemon.url("proj.git"), "--profile", str(profile))
        assert f"prefetched {len(JOB_FILES)} file(s) of proj" in added, added
        daemon.clear_trace()
        assert run_job(home / "mnt" / "proj") == expected_output()
        assert daemon.fetch_commands() == 0, "the job fetched while it ran"

    home = tmp_path / "home-async"  # --async: returned at once, replayed behind its back
    with running_daemon(home) as artifactfs:
        added = artifactfs.ok(
            "add-repo", "proj", daemon.url("proj.git"), "--profile", str(profile), "--async"
        )
        assert "prefetching proj in the background" in added, added
        log = home / "run" / "logs" / "prefetch-proj.log"
        wait_for(lambda: log.exists() and "prefetched" in log.read_text(), 60, "the replay")
        assert f"prefetched {len(JOB_FILES)} file(s) of proj" in log.read_text()
        daemon.clear_trace()
        assert run_job(home / "mnt" / "proj") == expected_output()
        assert daemon.fetch_commands() == 0, "the job fetched while it ran"


def test_prefetch_with_a_profile_skips_what_the_commit_lacks(
    daemon: GitDaemon, repos: Path, tmp_path: Path, home: Path, mnt: Path
) -> None:
    make_repo(repos, "proj.git", FILES)
    profile = tmp_path / "job.profile"
    profile.write_text("# by hand\nsrc/pkg1/mod2.py\nsrc/gone.py\n\nsrc/pkg1/mod2.py\nREADME.md\n")
    with running_daemon(home) as artifactfs:
        artifactfs.ok("add-repo", "proj", daemon.url("proj.git"))
        out = artifactfs.ok("prefetch", "proj", "--profile", str(profile))
        assert "prefetched 2 file(s) of proj" in out, out
        assert "1 of the profile's paths are not in this commit" in out, out
        for bad, why in (
            ("../etc/passwd\n", "cannot be in a tree"),
            (None, "cannot read the profile"),
        ):
            path = tmp_path / "bad.profile"
            if bad is None:
                path.unlink(missing_ok=True)
            else:
                path.write_text(bad)
            for args in (
                ("prefetch", "proj", "--profile", str(path)),
                ("add-repo", "other", daemon.url("proj.git"), "--profile", str(path)),
            ):
                result = artifactfs.cli(*args)
                assert result.returncode == 2 and why in result.stderr, (args, result)
                assert len(result.stderr.strip().splitlines()) == 1
        assert "other" not in artifactfs.ok("status")
    bad_record = run_cli(
        "mount", daemon.url("proj.git"), str(mnt), "--record-profile",
        str(tmp_path / "no" / "such" / "dir" / "p"), home=home,
    )  # fmt: skip
    assert bad_record.returncode == 2 and "--record-profile" in bad_record.stderr
