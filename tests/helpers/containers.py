"""The project's image, built and run with podman, and a container of it as a test handle.

podman runs rootful here with a configuration of the tests' own (never /etc/containers): the
``runc`` runtime (crun 1.8.1 refuses this host's hybrid cgroups), the cgroupfs manager, file
events, and ulimits under this host's hard limits (podman's defaults exceed them and every
start fails with ``setrlimit``). Its storage and everything the set-up builds live in a cache
outside the clone (``$ARTIFACTFS_TEST_CACHE``, default /var/cache/artifactfs-tests), so a
second run of the tests costs seconds:

- the base: the Dockerfile's ``FROM python:3.11-slim-bookworm`` cannot be pulled here (no
  container registry is reachable), so a stand-in is made from Debian's packages with
  ``mmdebstrap`` (bookworm with python3.11, its headers, venv and pip, and ``python``/``pip`` on
  the PATH as the official image has them) and tagged under that name; the build then runs
  with ``--pull=never`` on the unchanged Dockerfile. The host's extra CA certificates go into
  it: HTTPS leaves this network through an intercepting proxy, and pip must trust it. Like
  Debian's slim images it has no manuals or documentation and apt keeps no downloaded
  packages. Kept while its recipe (the package list, the certificates) is unchanged.
- the image: tagged by a digest of everything the build reads (the base, Dockerfile,
  .dockerignore, container/, pyproject.toml, README.md, artifactfs/), built only when that
  changes. Only the last image and its build stage are kept (the build stage holds the
  dependencies' wheels, so a change to artifactfs's code rebuilds in seconds).

Concurrent test sessions share the cache under a file lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .mounts import force_unmount, mount_table
from .waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent.parent
CACHE = Path(os.environ.get("ARTIFACTFS_TEST_CACHE", "/var/cache/artifactfs-tests")) / "container"
RUN_DIR = Path("/run/artifactfs-tests/podman")
"""podman's run root and temporary files: state that must not outlive a reboot."""

BASE_NAME = "docker.io/library/python:3.11-slim-bookworm"
BASE_PACKAGES = (
    "python3",
    "python3-dev",
    "python3-venv",
    "python3-pip",
    "python-is-python3",
    "ca-certificates",
)
BASE_RECIPE_VERSION = "4"
SLIM_DPKG_OPTIONS = (  # what Debian's slim images leave out
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/groff/*",
    "path-exclude=/usr/share/lintian/*",
)
APT_NO_CACHE = (  # nor what apt caches, as in Debian's images (the binary caches: 77 MB)
    'Binary::apt-get::APT::Keep-Downloaded-Packages "false";\n'
    'Dir::Cache::pkgcache "";\n'
    'Dir::Cache::srcpkgcache "";\n'
)
EXTRA_CA_DIR = Path("/usr/local/share/ca-certificates")
DEBIAN_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
DEBIAN_MIRROR = "http://deb.debian.org/debian"
IMAGE_REPOSITORY = "localhost/artifactfs-test"
BUILD_STAGE = "localhost/artifactfs-test-build:last"
BUILD_INPUTS = ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md")
BUILD_TREES = ("container", "artifactfs")

CONTAINERS_CONF = """\
# podman settings of artifactfs's tests (tests/helpers/containers.py), not of this host
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
log_driver = "k8s-file"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "{tmp}"
"""

STORAGE_CONF = """\
[storage]
driver = "overlay"
graphroot = "{graph}"
runroot = "{run}"
"""


def unavailable() -> str | None:
    """Why the container tests cannot run on this machine, in one line, or None."""
    if os.geteuid() != 0:
        return "the container tests run rootful podman: run them as root"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse on this machine"
    for tool in ("podman", "runc", "mmdebstrap"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/install --tests installs it)"
    return None


def _digest(paths: Sequence[Path], extra: str = "") -> str:
    digest = hashlib.sha256(extra.encode())
    for path in sorted(paths):
        digest.update(str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path).encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def build_inputs() -> list[Path]:
    """Every file the image build reads (caches excluded, as .dockerignore does)."""
    files = [ROOT / name for name in BUILD_INPUTS]
    for tree in BUILD_TREES:
        files += [
            p
            for p in (ROOT / tree).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
        ]
    return files


@dataclass
class Podman:
    """``podman`` with the tests' own configuration and storage."""

    cache: Path = CACHE
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        podman_dir = self.cache / "podman"
        podman_dir.mkdir(parents=True, exist_ok=True)
        (RUN_DIR / "tmp").mkdir(parents=True, exist_ok=True)
        containers = podman_dir / "containers.conf"
        storage = podman_dir / "storage.conf"
        containers.write_text(CONTAINERS_CONF.format(tmp=RUN_DIR / "tmp"))
        storage.write_text(
            STORAGE_CONF.format(graph=podman_dir / "storage", run=RUN_DIR / "runroot")
        )
        self.env = {
            **os.environ,
            "CONTAINERS_CONF": str(containers),
            "CONTAINERS_STORAGE_CONF": str(storage),
        }

    def run(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["podman", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"podman {' '.join(args)} exited with {result.returncode}:\n{result.stderr}"
            )
        return result

    def image_exists(self, name: str) -> bool:
        return self.run("image", "exists", name, check=False).returncode == 0

    def inspect_image(self, name: str) -> dict[str, Any]:
        (found,) = json.loads(self.run("image", "inspect", name).stdout)
        return dict(found)

    def remove_orphans(self, prefix: str) -> list[str]:
        """Remove containers named ``PREFIX-PID-...`` whose test process PID is gone (a session
        killed before its clean-up ran); those of live sessions are left alone."""
        listed = self.run("ps", "--all", "--format={{.Names}}", f"--filter=name=^{prefix}-")
        removed = []
        for name in listed.stdout.split():
            pid = name[len(prefix) + 1 :].split("-", 1)[0]
            if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                self.run("rm", "--force", "--time", "0", name, check=False, timeout=120)
                removed.append(name)
        return removed

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with open(self.cache / "setup.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield


@dataclass
class SetUp:
    """What the session's set-up made, and what it cost."""

    image: str
    base_seconds: float
    """Making the base (0 when it was cached)."""
    build_seconds: float
    """Building the image (0 when it was cached)."""
    total_seconds: float


def base_key() -> str:
    certificates = sorted(EXTRA_CA_DIR.glob("*.crt")) if EXTRA_CA_DIR.is_dir() else []
    sources = [DEBIAN_SOURCES] if DEBIAN_SOURCES.exists() else []
    recipe = " ".join(
        (BASE_RECIPE_VERSION, *BASE_PACKAGES, *SLIM_DPKG_OPTIONS, APT_NO_CACHE, DEBIAN_MIRROR)
    )
    return _digest(certificates + sources, recipe)[:16]


def make_base(podman: Podman) -> float:
    """The stand-in for the Dockerfile's base, unless the cache holds it: seconds spent."""
    key = base_key()
    stamp = podman.cache / f"base-{key}.done"
    if stamp.exists() and podman.image_exists(BASE_NAME):
        return 0.0
    start = time.monotonic()
    tarball = podman.cache / "base.tar"
    tarball.unlink(missing_ok=True)
    mirror = str(DEBIAN_SOURCES) if DEBIAN_SOURCES.exists() else DEBIAN_MIRROR
    hook = (
        'for c in /usr/local/share/ca-certificates/*.crt; do [ -e "$c" ] || continue; '
        'cp "$c" "$1/usr/local/share/ca-certificates/"; done; '
        'chroot "$1" update-ca-certificates >/dev/null; '
        f"printf '%s' '{APT_NO_CACHE}' > \"$1/etc/apt/apt.conf.d/docker-no-cache\"; "
        'rm -f "$1"/var/cache/apt/*.bin'
    )
    result = subprocess.run(
        [
            "mmdebstrap",
            "--quiet",
            "--variant=apt",
            f"--include={','.join(BASE_PACKAGES)}",
            *(f"--dpkgopt={option}" for option in SLIM_DPKG_OPTIONS),
            f"--customize-hook={hook}",
            "bookworm",
            str(tarball),
            mirror,
        ],
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"mmdebstrap failed ({result.returncode}):\n{result.stderr}")
    try:
        podman.run("import", "--change", 'CMD ["python3"]', str(tarball), BASE_NAME, timeout=300)
    finally:
        tarball.unlink(missing_ok=True)
    for old in podman.cache.glob("base-*.done"):
        old.unlink()
    stamp.touch()
    return time.monotonic() - start


def remove_old_images(podman: Podman, keep: Sequence[str]) -> None:
    """The tests' images but ``keep`` (other checkouts, earlier sources, an older base), then
    every image no tag needs any more. The build stage of the last build is kept under a tag
    of its own: it is what makes the next build quick (only artifactfs's wheel is rebuilt)."""
    for repository in (IMAGE_REPOSITORY, BUILD_STAGE.rsplit(":", 1)[0]):
        listed = podman.run("images", "--format", "{{.Repository}}:{{.Tag}}", repository)
        for old in listed.stdout.split():
            if old not in keep:
                podman.run("rmi", old, check=False)
    podman.run("image", "prune", "--force", check=False, timeout=300)


def build_image(podman: Podman, new_base: bool = False) -> tuple[str, float]:
    """The project's image from this checkout, unless the cache holds it: (name, seconds).
    After a new base, everything built on the old one goes first."""
    base_id = podman.inspect_image(BASE_NAME)["Id"]
    name = f"{IMAGE_REPOSITORY}:{_digest(build_inputs(), base_id)[:16]}"
    if podman.image_exists(name):
        return name, 0.0
    if new_base:
        remove_old_images(podman, keep=())
    start = time.monotonic()
    build = ["build", "--pull=never", "--format", "docker"]
    podman.run(*build, "--tag", name, str(ROOT), timeout=450)
    seconds = time.monotonic() - start
    podman.run(*build, "--target", "build", "--tag", BUILD_STAGE, str(ROOT), timeout=120)
    remove_old_images(podman, keep=(name, BUILD_STAGE))
    return name, seconds


def set_up(podman: Podman) -> SetUp:
    start = time.monotonic()
    with podman.locked():
        base_seconds = make_base(podman)
        image, build_seconds = build_image(podman, new_base=base_seconds > 0)
    return SetUp(image, base_seconds, build_seconds, time.monotonic() - start)


# -- a container of the image ---------------------------------------------------------------


def fuse_mounts_under(path: Path) -> list[Path]:
    """FUSE mounts in this (the host's) mount table at or under ``path``."""
    prefix = str(path)
    found = []
    with open("/proc/self/mountinfo") as table:
        for line in table:
            fields = line.split()
            point = fields[4]
            fstype = fields[fields.index("-") + 1]
            if (point == prefix or point.startswith(prefix + "/")) and fstype.startswith("fuse"):
                found.append(Path(point))
    return found


@contextlib.contextmanager
def shared_directory(path: Path) -> Iterator[Path]:
    """``path`` bound on itself and made rshared, so mounts made under it inside a container
    (bound with ``:rshared``) appear here; every mount under it undone afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
    try:
        subprocess.run(["mount", "--make-rshared", str(path)], check=True)
        yield path
    finally:
        for mount in reversed(fuse_mounts_under(path)):
            force_unmount(mount)
            if any(point == str(mount) for point, _ in mount_table()):
                subprocess.run(["umount", "-l", str(mount)], check=False)
        subprocess.run(["umount", "-l", str(path)], check=False)


@dataclass
class Container:
    podman: Podman
    name: str

    def exec(
        self,
        *argv: str,
        user: str | None = None,
        check: bool = True,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        options = ["--user", user] if user is not None else []
        result = self.podman.run("exec", *options, self.name, *argv, check=False, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} in {self.name} exited with {result.returncode}:\n"
                f"{result.stdout}{result.stderr}"
            )
        return result

    def state(self) -> dict[str, Any]:
        """``State`` (running, exited), ``Status`` (with the health), ``ExitCode``, of ``podman
        ps``. Not ``podman inspect``: for a container given a device, it walks the host's /dev
        to name it, and hangs on any unresponsive FUSE mount it meets there."""
        listed = self.podman.run("ps", "--all", f"--filter=name=^{self.name}$", "--format=json")
        (found,) = json.loads(listed.stdout)
        return dict(found)

    def running(self) -> bool:
        return self.state().get("State") == "running"

    def check_running(self) -> None:
        if not self.running():
            raise AssertionError(f"container {self.name} exited:\n{self.logs()}")

    def logs(self) -> str:
        result = self.podman.run("logs", self.name, check=False)
        return result.stdout + result.stderr

    def answers(self) -> bool:
        return self.exec("artifactfs", "status", check=False).returncode == 0

    def wait_answers(self, timeout: float = 30) -> None:
        wait_for(
            self.answers, timeout, "the daemon in the container to answer", 0.05, self.check_running
        )

    def status(self, name: str) -> dict[str, Any]:
        (repo,) = json.loads(self.exec("artifactfs", "status", name, "--json").stdout)
        return dict(repo)

    def remove(self) -> None:
        self.podman.run("rm", "--force", "--time", "0", self.name, check=False, timeout=120)

    def save_logs(self, path: Path) -> None:
        """The container's output (the daemon's stderr) to ``path``: name it ``*.stderr``
        under the test's directory and the log check reads it (tests/helpers/checklogs.py)."""
        result = self.podman.run("logs", self.name, check=False)
        if result.returncode == 0:
            path.write_text(result.stdout + result.stderr)


@contextlib.contextmanager
def daemon_container(
    podman: Podman,
    image: str,
    name: str,
    volumes: Sequence[str],
    options: Sequence[str] = (),
    args: Sequence[str] = (),
    log_dir: Path | None = None,
) -> Iterator[Container]:
    """``podman run -d`` of the image (its entrypoint: the daemon) with /dev/fuse, SYS_ADMIN and
    the host's network; removed (killed if need be) however the block ends, its output kept
    first in ``log_dir/NAME.stderr``."""
    container = Container(podman, name)
    container.remove()  # one left by a run that was killed
    volume_options = [f"--volume={v}" for v in volumes]
    try:
        podman.run(
            "run",
            "--detach",
            f"--name={name}",
            "--device=/dev/fuse",
            "--cap-add=SYS_ADMIN",
            "--network=host",
            *volume_options,
            *options,
            image,
            *args,
        )
        yield container
    finally:
        if log_dir is not None:
            container.save_logs(log_dir / f"{name}.stderr")
        container.remove()
