"""The image, built from this checkout and run for real with podman (tests/helpers/containers.py).

The session builds the image once (a stand-in base from Debian's packages, then the unchanged
Dockerfile; both cached outside the clone, so a second run costs seconds), then each test
starts containers of it the way docs/sandbox.md says: ``--device /dev/fuse --cap-add
SYS_ADMIN``, the host's network (the git server is on the host's loopback), the state volume,
and a host directory bound ``rshared`` so the repositories mounted inside appear on the host.

What the image promises and is checked here: its configuration (entrypoint, health check, stop
signal, volume, labels, user), what it holds (no compiler, the pinned versions), the daemon as
its entrypoint mounting for the host (an ``--async`` placeholder at once, reads inside and on
the host, readers that are not root through ``--allow-other``, a workspace edit, ``git``),
``podman stop`` well within 10 s with no mount left, a new container on the same state with
every repository back and nothing fetched again, the daemon as the image's own user, the
health check's exit codes, and one repository mounted without the daemon (``artifactfs mount``
as the main process). Figures (set-up, start to mounted, stop) go to ``figures.json`` in
the cache for docs/sandbox.md.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BIG, SAMPLE_FILES
from tests.helpers.containers import (
    BASE_NAME,
    ROOT,
    Container,
    Podman,
    SetUp,
    daemon_container,
    fuse_mounts_under,
    set_up,
    shared_directory,
    unavailable,
)
from tests.helpers.gitrepos import Repo
from tests.helpers.mounts import is_mounted
from tests.helpers.servers import GitDaemon, GitProxy
from tests.helpers.waiting import wait_for

# The first test also pays for the session's set-up: minutes when the cache is cold (the base
# and the build), more than the default timeout on a loaded machine. Every podman command has
# a timeout of its own, so a hang still ends.
pytestmark = [pytest.mark.container, pytest.mark.timeout(1200)]

HOME = "/var/lib/artifactfs"
CONTAINER_PREFIX = "artifactfs-test"
SHARED = "/mnt/artifacts"
USER_ID = 10001
README = SAMPLE_FILES["README.md"]
assert isinstance(README, bytes)
STOP_BOUND = 10.0
"""docs/sandbox.md: the daemon stops within about 9 s, under Docker's default of 10 s."""


@pytest.fixture(scope="session")
def podman() -> Podman:
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    podman = Podman()
    podman.remove_orphans(CONTAINER_PREFIX)
    return podman


@pytest.fixture(scope="session")
def built(podman: Podman) -> SetUp:
    done = set_up(podman)
    seconds = round(done.total_seconds, 1)
    if done.base_seconds:
        record_figures(setup_cold_s=seconds, base_s=round(done.base_seconds, 1))
    elif done.build_seconds:
        record_figures(setup_build_only_s=seconds)
    else:
        record_figures(setup_cached_s=seconds)
    return done


@pytest.fixture
def image(built: SetUp) -> str:
    return built.image


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[Path]:
    with shared_directory(tmp_path / "shared") as path:
        yield path


@pytest.fixture
def state(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    return path


def record_figures(**figures: Any) -> None:
    """Merge measured figures into the cache's figures.json (read for docs/sandbox.md)."""
    path = Path(os.environ.get("ARTIFACTFS_TEST_CACHE", "/var/cache/artifactfs-tests"))
    path = path / "container" / "figures.json"
    known = json.loads(path.read_text()) if path.exists() else {}
    known.update({k: v for k, v in figures.items() if v is not None})
    path.write_text(json.dumps(known, indent=1, sort_keys=True) + "\n")


def host_read(path: Path) -> bytes:
    """A file read on the host, by a process of its own: a mount that hangs fails this test in
    a minute instead of holding the whole session until the test's timeout."""
    return subprocess.run(["cat", str(path)], capture_output=True, check=True, timeout=60).stdout


def name_of(tmp_path: Path, suffix: str = "") -> str:
    """A container name unique to this test in this process (test sessions may run side by
    side on the same podman storage)."""
    name = f"{CONTAINER_PREFIX}-{os.getpid()}-{tmp_path.name}{suffix}"
    return re.sub(r"[^a-z0-9.-]", "-", name.lower())


def volumes(state: Path, shared: Path | None = None) -> list[str]:
    found = [f"{state}:{HOME}"]
    if shared is not None:
        found.append(f"{shared}:{SHARED}:rshared")
    return found


def stop(container: Container) -> float:
    """``podman stop``: the seconds it took; the daemon must have exited with 0."""
    start = time.monotonic()
    container.podman.run("stop", "--time", "30", container.name, timeout=60)
    seconds = time.monotonic() - start
    exit_code = container.state().get("ExitCode")
    assert exit_code == 0, f"the daemon exited with {exit_code}:\n{container.logs()}"
    return seconds


# -- the image as built ---------------------------------------------------------------------


def test_the_built_image_is_configured_as_the_dockerfile_says(podman: Podman, image: str) -> None:
    found = podman.inspect_image(image)
    config = found["Config"]
    assert config["Entrypoint"] == ["artifactfs", "daemon"]
    assert not config.get("Cmd"), "a CMD would be passed to the daemon as arguments"
    assert config["StopSignal"] == "SIGTERM"
    assert list(config["Volumes"]) == [HOME]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["ARTIFACTFS_HOME"] == HOME
    assert env["PATH"].split(":")[0] == "/opt/artifactfs/bin"
    assert not config.get("User"), "the daemon runs as root unless --user says otherwise"
    # podman keeps the health check only with --format docker (docs/sandbox.md)
    check = found["Healthcheck"]
    assert check["Test"] == ["CMD-SHELL", "artifactfs status || exit 1"]
    assert (check["Interval"], check["Timeout"]) == (30 * 10**9, 10 * 10**9)
    assert (check["StartPeriod"], check["Retries"]) == (30 * 10**9, 3)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.title"] == "artifactfs"
    assert labels["org.opencontainers.image.version"] == project["version"]
    assert labels["org.opencontainers.image.description"] == project["description"]
    assert labels["org.opencontainers.image.licenses"] == project["license"]["text"]
    base = podman.inspect_image(BASE_NAME)
    record_figures(
        image_mb=round(found["Size"] / 1e6),
        image_over_base_mb=round((found["Size"] - base["Size"]) / 1e6),
    )


INSPECT_CONTENTS = r"""
import grp, importlib.metadata as md, json, os, pwd, shutil, stat, sys
home = os.stat("/var/lib/artifactfs")
json.dump({
    "tools": {t: shutil.which(t) for t in ("gcc", "cc", "pkg-config", "make", "git",
                                           "fusermount3", "artifactfs")},
    "fuse_headers": os.path.exists("/usr/include/fuse3"),
    "fusermount3_setuid": bool(os.stat(shutil.which("fusermount3")).st_mode & stat.S_ISUID),
    "fuse_conf": open("/etc/fuse.conf").read().split(),
    "user": list(pwd.getpwnam("artifactfs")[2:4]),
    "group": grp.getgrnam("artifactfs")[2],
    "home": [home.st_uid, home.st_gid, oct(home.st_mode & 0o7777)],
    "python": sys.executable,
    "wheels": os.path.exists("/wheels"),
    "installed": {d.metadata["Name"].lower().replace("_", "-"): d.version
                  for d in md.distributions()},
}, sys.stdout)
"""


def test_the_built_image_holds_no_build_tools_and_the_pinned_versions(
    podman: Podman, image: str
) -> None:
    result = podman.run(
        "run", "--rm", "--network=none", "--entrypoint=python", image, "-c", INSPECT_CONTENTS
    )
    found = json.loads(result.stdout)
    tools = found["tools"]
    assert [t for t in ("gcc", "cc", "pkg-config", "make") if tools[t]] == []
    assert not found["fuse_headers"] and not found["wheels"]
    assert tools["git"] and tools["fusermount3"] and found["fusermount3_setuid"]
    assert tools["artifactfs"] == "/opt/artifactfs/bin/artifactfs"
    assert found["python"] == "/opt/artifactfs/bin/python"
    # the non-root option: its user owns the state directory and may ask for allow_other
    assert found["user"] == [USER_ID, USER_ID] and found["group"] == USER_ID
    assert found["home"] == [USER_ID, USER_ID, "0o711"]
    assert "user_allow_other" in found["fuse_conf"]
    # exactly the pins of container/requirements.txt, and artifactfs, nothing else
    pins = {}
    for line in (ROOT / "container" / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    installed = found["installed"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert installed.pop("artifactfs") == project["version"]
    assert installed == pins


# -- the daemon as the entrypoint, mounting for the host --------------------------------------


def test_the_daemon_in_a_container_mounts_for_the_host(
    podman: Podman,
    image: str,
    tmp_path: Path,
    state: Path,
    shared: Path,
    sample: Repo,
    daemon: GitDaemon,
) -> None:
    proxy = GitProxy(daemon.port, held=True)  # the origin answers only once released
    url = f"git://127.0.0.1:{proxy.port}/sample.git"
    app = shared / "app"
    try:
        started = time.monotonic()
        with daemon_container(
            podman, image, name_of(tmp_path), volumes(state, shared), log_dir=tmp_path
        ) as c:
            c.wait_answers()
            answering = time.monotonic() - started
            c.exec("mkdir", "-p", f"{SHARED}/app", f"{SHARED}/private")
            c.exec(
                "artifactfs", "add-repo", "--async", "--allow-other", "app", url,
                "--mount", f"{SHARED}/app",
            )  # fmt: skip
            mounted = time.monotonic() - started
            # the placeholder is in the host's mount table at once, while the origin is silent
            assert is_mounted(app), fuse_mounts_under(shared)
            assert c.status("app")["state"] == "preparing"
            proxy.release()
            wait_for(lambda: c.status("app")["state"] == "ready", 30, "app to be ready",
                     while_alive=c.check_running)  # fmt: skip
            ready = time.monotonic() - started

            # read on the host through propagation, and inside
            assert host_read(app / "README.md") == README
            assert host_read(app / "data" / "big.bin") == BIG
            assert host_read(app / "links" / "to-readme") == README
            inside = c.exec("sha256sum", f"{SHARED}/app/data/big.bin").stdout.split()[0]
            assert inside == _sha256(BIG)

            # readers that are not root: a user of this container, and a container of its own
            # as uid 1000 with no network, given the mounts through an rslave bind
            as_user = c.exec("cat", f"{SHARED}/app/README.md", user=str(USER_ID))
            assert as_user.stdout.encode() == README
            sandbox = podman.run(
                "run", "--rm", "--network=none", "--user=1000:1000", "--entrypoint=cat",
                f"--volume={shared}:/repos:ro,rslave", image, "/repos/app/README.md",
            )  # fmt: skip
            assert sandbox.stdout.encode() == README
            # ... and without --allow-other, only the daemon's user may look
            c.exec("artifactfs", "add-repo", "private", url, "--mount", f"{SHARED}/private")
            denied = c.exec("ls", f"{SHARED}/private", user=str(USER_ID), check=False)
            assert denied.returncode != 0 and "Permission denied" in denied.stderr

            # a git mount is a working tree: an edit inside is seen on the host, and git works
            c.exec("sh", "-c", f"echo edited >> {SHARED}/app/README.md")
            assert host_read(app / "README.md") == README + b"edited\n"
            log = c.exec("git", "-C", f"{SHARED}/app", "log", "--format=%H", "-1").stdout
            assert log.strip() == sample.commit
            changes = c.exec("git", "-C", f"{SHARED}/app", "status", "--porcelain").stdout
            assert changes.splitlines() == [" M README.md"]

            assert podman.run("healthcheck", "run", c.name, check=False).returncode == 0
            stop_seconds = stop(c)
            assert stop_seconds < STOP_BOUND, f"podman stop took {stop_seconds:.1f} s"
            assert fuse_mounts_under(shared) == [], "a mount outlived the container"

        # a new container on the same state: every repository back, nothing fetched again
        mark = daemon.trace_mark()
        with daemon_container(
            podman, image, name_of(tmp_path, "-again"), volumes(state, shared), log_dir=tmp_path
        ) as again:
            again.wait_answers()
            for name in ("app", "private"):
                wait_for(lambda n=name: again.status(n)["state"] == "ready", 30,
                         f"{name} to be ready again", while_alive=again.check_running)  # fmt: skip
            wait_for(lambda: is_mounted(app), 10, "app to be mounted on the host again")
            assert host_read(app / "README.md") == README + b"edited\n"
            assert host_read(app / "data" / "big.bin") == BIG
            assert daemon.wanted(mark) == [] and daemon.fetch_commands(mark) == 0
            # the origin is asked which commit the ref names (ls-refs), never for an object
            commands = {p for p in daemon.packets(mark) if p.startswith("command=")}
            assert commands <= {"command=ls-refs"}, commands
            assert stop(again) < STOP_BOUND
            assert fuse_mounts_under(shared) == []
    finally:
        proxy.stop()
    record_figures(
        start_to_daemon_answering_s=round(answering, 2),
        start_to_first_mounted_s=round(mounted, 2),
        start_to_first_ready_s=round(ready, 2),
        stop_s=round(stop_seconds, 2),
    )


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_the_daemon_runs_as_the_images_own_user(
    podman: Podman,
    image: str,
    tmp_path: Path,
    state: Path,
    sample: Repo,
    daemon: GitDaemon,
) -> None:
    os.chown(state, USER_ID, USER_ID)  # what a fresh named volume gets from the image
    name = name_of(tmp_path)
    with daemon_container(
        podman, image, name, volumes(state), ["--user=artifactfs"], log_dir=tmp_path
    ) as c:
        # This host's /dev/fuse is 0600 root (no udev) and the container's copy keeps that;
        # where udev made it 0666, as on a normal install, nothing needs doing.
        c.exec("chmod", "0666", "/dev/fuse", user="0")
        c.wait_answers()
        c.exec("artifactfs", "add-repo", "--allow-other", "app", daemon.url("sample.git"))
        mnt = f"{HOME}/mnt/app"
        assert c.exec("cat", f"{mnt}/README.md", user="0").stdout.encode() == README
        table = c.exec("cat", "/proc/self/mountinfo").stdout
        (line,) = [entry for entry in table.splitlines() if f" {mnt} " in entry]
        assert f"user_id={USER_ID}" in line and "allow_other" in line
        assert stop(c) < STOP_BOUND


def test_the_health_check_exit_codes(
    podman: Podman, image: str, tmp_path: Path, state: Path
) -> None:
    name = name_of(tmp_path)
    # the container runs, the daemon does not (yet)
    with daemon_container(
        podman, image, name, volumes(state), ["--entrypoint=sleep"], ["infinity"]
    ) as c:
        # `artifactfs status` says "no daemon" with 2, which Docker reserves: the check says 1
        assert c.exec("artifactfs", "status", check=False).returncode == 2
        assert c.exec("sh", "-c", "artifactfs status || exit 1", check=False).returncode == 1
        unhealthy = podman.run("healthcheck", "run", name, check=False)
        assert unhealthy.returncode == 1, unhealthy
        started = c.exec("artifactfs", "daemon", "--detach").stdout.split()
        healthy = podman.run("healthcheck", "run", name, check=False)
        assert healthy.returncode == 0, healthy
        assert c.state()["Status"].endswith("(healthy)")
        # "artifactfs daemon PID serving HOME": stopped, it is unhealthy again
        c.exec("sh", "-c", f"kill -TERM {int(started[started.index('daemon') + 1])}")
        wait_for(lambda: not c.answers(), 20, "the daemon to stop")
        assert podman.run("healthcheck", "run", name, check=False).returncode == 1


def test_one_repository_without_the_daemon(
    podman: Podman,
    image: str,
    tmp_path: Path,
    state: Path,
    shared: Path,
    sample: Repo,
    daemon: GitDaemon,
    expect_log: Any,
) -> None:
    """docs/sandbox.md's `artifactfs mount` as the container's main process: mounted for the
    host, stopped by `podman stop`; a repository that cannot be prepared ends the container
    with status 1 and one line."""
    url = daemon.url("sample.git")
    script = f"mkdir -p {SHARED}/repo && exec artifactfs mount {url} {SHARED}/repo"
    name = name_of(tmp_path)
    entrypoint = ["--entrypoint=sh"]
    with daemon_container(
        podman, image, name, volumes(state, shared), entrypoint, ["-c", script], tmp_path
    ) as c:
        wait_for(lambda: is_mounted(shared / "repo"), 30, "the mount on the host",
                 while_alive=c.check_running)  # fmt: skip
        assert host_read(shared / "repo" / "README.md") == README
        assert stop(c) < STOP_BOUND
        assert fuse_mounts_under(shared) == []

    expect_log(r"cannot prepare .*sample\.git-missing", level="ERROR", required=True)
    missing = f"mkdir -p /mnt/missing && exec artifactfs mount {url}-missing /mnt/missing"
    with daemon_container(
        podman, image, name_of(tmp_path, "-missing"), volumes(state), entrypoint,
        ["-c", missing], tmp_path,
    ) as failed:  # fmt: skip
        wait_for(lambda: not failed.running(), 60, "the mount to give up")
        assert failed.state()["ExitCode"] == 1
        output = failed.logs().strip().splitlines()
        assert len(output) == 1 and output[0].startswith("artifactfs: cannot prepare"), output
