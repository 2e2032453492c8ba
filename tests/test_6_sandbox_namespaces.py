"""Readers in sandboxes: a repository mounted outside, read from fresh Linux namespaces.

Containers are namespaces, and there is no container engine here, so the sandboxes are made
the way engines make them: ``unshare --mount --pid --net --fork --mount-proc`` (util-linux)
and, when installed, bubblewrap. The mount worker stays outside with the network; the reader
inside has its own mount table, its own PIDs and no network at all (only a ``lo`` of its own),
so a cold file it reads is fetched by the worker on its behalf. Every sandbox is started with
``--kill-child``/``--die-with-parent`` and torn down in ``finally``: its init is killed, its
launcher reaped, and we wait until no process is left in its PID namespace.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import BIG, BINARY
from tests.helpers.gitrepos import Repo
from tests.helpers.mounts import blocked_in_fuse, is_mounted, is_stale, mounted
from tests.helpers.ports import accepts_connections
from tests.helpers.servers import GitDaemon, GitProxy
from tests.helpers.waiting import wait_for


def unshare(propagation: str = "private") -> list[str]:
    """A fresh mount, PID and network namespace; its init is killed if ``unshare`` dies."""
    return [
        "unshare",
        "--mount",
        "--pid",
        "--net",
        "--fork",
        "--mount-proc",
        f"--propagation={propagation}",
        "--kill-child=SIGKILL",
    ]


UNSHARE = unshare()

EXACT = {
    "README.md": b"# sample\n",
    "data/binary.dat": BINARY,
    "data/big.bin": BIG,
    "bin/tool.sh": b"#!/bin/sh\necho tool\n",
    "name with spaces.txt": b"spaces\n",
    "unicod\u00e9.txt": "caf\u00e9\n".encode(),
    "deep/a/b/c/d/leaf.txt": b"leaf\n",
    "empty.txt": b"",
    "links/to-readme": b"# sample\n",  # through a symlink inside the mount
}

# A reader inside the sandbox: what it can see of the world, then the bytes of its arguments.
PROBE = r"""
import base64, errno, json, os, socket, sys
port, paths = int(sys.argv[1]), sys.argv[2:]
try:
    socket.create_connection(("127.0.0.1", port), timeout=5).close()
    connect = "connected"
except OSError as exc:
    connect = errno.errorcode.get(exc.errno or 0, repr(exc))
files = {}
for path in paths:
    with open(path, "rb") as f:
        files[path] = base64.b64encode(f.read()).decode()
json.dump({
    "pid": os.getpid(),
    "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
    "interfaces": sorted(name for _, name in socket.if_nameindex()),
    "connect": connect,
    "ns": {kind: os.readlink(f"/proc/self/ns/{kind}") for kind in ("mnt", "pid", "net")},
    "files": files,
}, sys.stdout)
"""

# Bind the mount somewhere else inside the sandbox, privately, and read it there.
BIND_SCRIPT = r"""
set -eu
mnt=$1 root=$2 how=$3
shift 3
mount --make-rprivate /
mount -t tmpfs -o size=1m,mode=0755 sandbox "$root"
mkdir "$root/repo"
mount "$how" "$mnt" "$root/repo"
mount --make-rprivate "$root/repo"
links=$(ip -o link show)
info=$(awk -v p="$root/repo" '$5 == p' /proc/self/mountinfo)
printf 'pid\t%s\n' "$$"
printf '%s\n' "$links" | sed 's/^/ip\t/'
printf 'mountinfo\t%s\n' "$info"
cd "$root/repo"
for path in "$@"; do
    data=$(base64 -w0 "$path")
    printf 'file\t%s\t%s\n' "$path" "$data"
done
target=$(readlink links/to-readme)
printf 'readlink\t%s\n' "$target"
"""

# The reader tools of a sandbox (no git: the mount is a tree, not a clone).
TOOLS_SCRIPT = r"""
set -eu
cd "$1"
find . -mindepth 1 -printf '%y %P\0' > "$2/find"
find . -type f -print0 | sort -z | xargs -0 sha256sum -z > "$2/sha256"
find . -type l -printf '%P\0%l\0' > "$2/links"
grep -rlZ -F -e tool -e leaf -e spaces . > "$2/grep" || test $? -eq 1
"""

BWRAP_ROOT = [
    "--ro-bind",
    "/usr",
    "/usr",
    *(
        arg
        for name in ("bin", "lib", "lib64", "sbin")
        if os.path.islink(f"/{name}")
        for arg in ("--symlink", os.readlink(f"/{name}"), f"/{name}")
    ),
    *(
        arg
        for name in ("bin", "lib", "lib64", "sbin")
        if os.path.isdir(f"/{name}") and not os.path.islink(f"/{name}")
        for arg in ("--ro-bind", f"/{name}", f"/{name}")
    ),
    "--proc",
    "/proc",
    "--dev",
    "/dev",
    "--ro-bind",
    "/etc",
    "/etc",
    "--tmpfs",
    "/tmp",
]


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        if ppid == pid:
            found.append(int(entry))
    return found


def pid_namespace(pid: int | str) -> tuple[int, int] | None:
    try:
        st = os.stat(f"/proc/{pid}/ns/pid")
    except OSError:  # gone, or a zombie
        return None
    return (st.st_dev, st.st_ino)


def members(namespace: tuple[int, int]) -> list[int]:
    """Host PIDs of every live process in a PID namespace."""
    return [
        int(entry)
        for entry in os.listdir("/proc")
        if entry.isdigit() and pid_namespace(entry) == namespace
    ]


@dataclass
class Sandbox:
    launcher: subprocess.Popen[bytes]
    init: int | None = None
    namespace: tuple[int, int] | None = None
    seen: set[int] = field(default_factory=set)

    def find_init(self) -> int:
        """The host PID of the sandbox's PID 1 (the launcher's child in a new namespace)."""

        def found() -> int | None:
            host = pid_namespace("self")
            for child in children_of(self.launcher.pid):
                namespace = pid_namespace(child)
                if namespace is not None and namespace != host:
                    self.init, self.namespace = child, namespace
                    return child
            return None

        if self.init is None:
            wait_for(found, 10, "the sandbox's init", while_alive=self._launcher_alive)
        assert self.init is not None
        return self.init

    def _launcher_alive(self) -> None:
        if self.launcher.poll() is not None:
            raise AssertionError(f"the sandbox ended with {self.launcher.returncode}")

    def processes(self) -> list[int]:
        assert self.namespace is not None
        found = members(self.namespace)
        self.seen.update(found)
        return found


@contextmanager
def sandboxed(launcher: Sequence[str], argv: Sequence[str]) -> Iterator[Sandbox]:
    """Run ``argv`` in a sandbox; whatever happens, nothing of it survives the block."""
    process = subprocess.Popen(
        [*launcher, *argv], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    sandbox = Sandbox(process)
    try:
        yield sandbox
    finally:
        if process.poll() is None:
            with suppress(AssertionError):
                sandbox.find_init()
            if sandbox.init is not None:
                with suppress(ProcessLookupError):
                    os.kill(sandbox.init, signal.SIGKILL)
            process.kill()
        with suppress(subprocess.TimeoutExpired):
            process.communicate(timeout=10)
        if sandbox.namespace is not None:
            wait_for(lambda: not sandbox.processes(), 10, "the sandbox's processes to end")
        assert process.poll() is not None, "the sandbox launcher is still running"


def run_sandboxed(
    launcher: Sequence[str], argv: Sequence[str], timeout: float = 30
) -> subprocess.CompletedProcess[bytes]:
    with sandboxed(launcher, argv) as sandbox:
        out, err = sandbox.launcher.communicate(timeout=timeout)
        result = subprocess.CompletedProcess(
            sandbox.launcher.args, sandbox.launcher.returncode, out, err
        )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result


def probe(mnt: Path, port: int, paths: Sequence[str]) -> dict[str, object]:
    argv = [sys.executable, "-I", "-c", PROBE, str(port), *(str(mnt / p) for p in paths)]
    report: dict[str, object] = json.loads(run_sandboxed(UNSHARE, argv).stdout)
    return report


def fields(output: bytes) -> dict[str, list[str]]:
    """``key<TAB>value`` lines -> key: every value given (``file<TAB>PATH<TAB>base64`` lines
    are keyed ``file:PATH``)."""
    parsed: dict[str, list[str]] = {}
    for line in output.decode().splitlines():
        key, value = line.split("\t", 1)
        if key == "file":
            path, value = value.split("\t", 1)
            key = f"file:{path}"
        parsed.setdefault(key, []).append(value)
    return parsed


def interfaces(out: dict[str, list[str]]) -> list[str]:
    """Interface names from ``ip -o link show`` lines (``1: lo: <LOOPBACK...``)."""
    return sorted(line.split(":")[1].strip() for line in out["ip"])


def host_namespaces() -> dict[str, str]:
    return {kind: os.readlink(f"/proc/self/ns/{kind}") for kind in ("mnt", "pid", "net")}


def test_a_reader_without_network_gets_exact_bytes_even_of_cold_files(
    daemon: GitDaemon, sample: Repo, mnt: Path, home: Path
) -> None:
    big_oid = sample.blob_id("data/big.bin")
    with mounted(daemon.url("sample.git"), mnt, home) as mount:
        assert (mnt / "README.md").read_bytes() == b"# sample\n"  # warm: read outside first
        assert (mnt / "data" / "binary.dat").read_bytes() == BINARY
        assert mount.xattr("cached", mnt / "data" / "big.bin") == "0"  # cold
        assert big_oid not in daemon.wanted()
        assert accepts_connections(daemon.port)  # the host reaches the server...

        report = probe(mnt, daemon.port, list(EXACT))

        assert report["connect"] == "ENETUNREACH"  # ...the sandbox cannot
        assert report["interfaces"] == ["lo"]
        assert report["pid"] == 1
        assert report["pids"] == [1]
        namespaces = report["ns"]
        assert isinstance(namespaces, dict)
        for kind, host in host_namespaces().items():
            assert namespaces[kind] != host, kind
        files = report["files"]
        assert isinstance(files, dict)
        for path, expected in EXACT.items():
            data = base64.b64decode(files[str(mnt / path)])
            assert data == expected, path
            assert hashlib.sha256(data).digest() == hashlib.sha256(expected).digest()
        assert daemon.wanted().count(big_oid) == 1  # fetched by the worker, outside, once
        assert mount.xattr("cached", mnt / "data" / "big.bin") == str(len(BIG))


@contextmanager
def shared_mount_point(path: Path) -> Iterator[Path]:
    """``path`` as a shared mount of the host: what is mounted under it in a namespace that
    still shares its propagation with the host would show up on the host as well."""
    path.mkdir()
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
    try:
        subprocess.run(["mount", "--make-shared", str(path)], check=True)
        yield path
    finally:
        for _ in range(10):  # our bind, and anything a failing test let through on top of it
            below = sorted(mountpoints_under(path), key=len, reverse=True)
            if not below:
                break
            subprocess.run(["umount", "-l", below[0]], check=False)


def mountpoints_under(path: Path) -> list[str]:
    with open("/proc/self/mountinfo") as table:
        return [m for line in table if (m := line.split()[4]).startswith(str(path))]


@pytest.mark.parametrize("how", ["--bind", "--rbind"])
def test_a_private_bind_inside_the_sandbox_serves_and_never_leaks(
    how: str, daemon: GitDaemon, sample: Repo, mnt: Path, home: Path, tmp_path: Path
) -> None:
    # The sandbox starts with the host's propagation unchanged, under a shared mount: only
    # its own ``--make-rprivate`` keeps its tmpfs and bind from propagating to the host.
    with (
        mounted(daemon.url("sample.git"), mnt, home) as mount,
        shared_mount_point(tmp_path / "shared") as shared,
    ):
        root = shared / "sandbox-root"
        root.mkdir()
        assert (mnt / "README.md").read_bytes() == b"# sample\n"
        assert mount.xattr("cached", mnt / "data" / "big.bin") == "0"
        argv = ["sh", "-c", BIND_SCRIPT, "sandbox", str(mnt), str(root), how, *EXACT]
        out = fields(run_sandboxed(unshare("unchanged"), argv).stdout)

        assert out["pid"] == ["1"]
        assert interfaces(out) == ["lo"]
        (mountinfo,) = out["mountinfo"]
        assert mountinfo.split(" - ")[1].split()[0] == "fuse.artifactfs", mountinfo
        assert "shared:" not in mountinfo.split(" - ")[0], mountinfo  # private
        for path, expected in EXACT.items():
            assert base64.b64decode(out[f"file:{path}"][0]) == expected, path
        assert out["readlink"] == ["../README.md"]

        # The host saw none of it: no tmpfs, no bind, nothing written under the tmpfs.
        assert mountpoints_under(shared) == [str(shared)]
        assert os.listdir(root) == []
        # The original mount is untouched and still serves the host.
        assert is_mounted(mnt) and not is_stale(mnt)
        assert (mnt / "data" / "big.bin").read_bytes() == BIG
        mount.check_alive()


def test_find_grep_and_sha256sum_in_the_sandbox_match_git_archive(
    daemon: GitDaemon, sample: Repo, mnt: Path, home: Path, tmp_path: Path
) -> None:
    results = tmp_path / "results"
    results.mkdir()
    expected_files: dict[str, str] = {}
    expected_links: dict[str, str] = {}
    expected_types: dict[str, str] = {}
    expected_grep: set[str] = set()
    with sample.archive() as archive:
        for member in archive.getmembers():
            if member.name == "pax_global_header":
                continue
            name = member.name.rstrip("/")
            if member.isfile():
                data = archive.extractfile(member)
                assert data is not None
                content = data.read()
                expected_files[name] = hashlib.sha256(content).hexdigest()
                expected_types[name] = "f"
                if any(word in content for word in (b"tool", b"leaf", b"spaces")):
                    expected_grep.add(name)
            elif member.issym():
                expected_links[name] = member.linkname
                expected_types[name] = "l"
            elif member.isdir():
                expected_types[name] = "d"
    assert len(expected_files) == 8 and len(expected_links) == 4  # the sample, all of it
    assert expected_grep  # the grep must find something, so it can find something wrong

    # read-only: what git archive holds, and nothing more (a workspace adds .git)
    with mounted(daemon.url("sample.git"), mnt, home, "--read-only"):
        run_sandboxed(UNSHARE, ["sh", "-c", TOOLS_SCRIPT, "sandbox", str(mnt), str(results)])

    def records(name: str) -> list[str]:
        return [r.decode() for r in (results / name).read_bytes().split(b"\0") if r]

    types: dict[str, str] = {}
    for record in records("find"):
        kind, path = record.split(" ", 1)
        types[path] = kind
    sums: dict[str, str] = {}
    for record in records("sha256"):
        digest, path = record.split("  ", 1)
        sums[path.removeprefix("./")] = digest
    link_records = records("links")
    links = dict(zip(link_records[::2], link_records[1::2], strict=True))
    grep = {path.removeprefix("./") for path in records("grep")}

    assert sums == expected_files
    assert links == expected_links
    assert types == expected_types
    assert grep == expected_grep


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed")
def test_a_bubblewrap_sandbox_reads_the_mount_read_only_at_its_own_path(
    daemon: GitDaemon, sample: Repo, mnt: Path, home: Path
) -> None:
    script = r"""
    set -eu
    links=$(ip -o link show)
    info=$(awk '$5 == "/repo"' /proc/self/mountinfo)
    printf 'pid\t%s\n' "$$"
    printf '%s\n' "$links" | sed 's/^/ip\t/'
    printf 'mountinfo\t%s\n' "$info"
    cd /repo
    for path in "$@"; do
        data=$(base64 -w0 "$path")
        printf 'file\t%s\t%s\n' "$path" "$data"
    done
    sum=$(sha256sum data/big.bin)
    printf 'sha256\t%s\n' "$sum"
    """
    bwrap = ["bwrap", "--unshare-all", "--die-with-parent", *BWRAP_ROOT]
    with mounted(daemon.url("sample.git"), mnt, home) as mount:
        assert mount.xattr("cached", mnt / "data" / "big.bin") == "0"
        launcher = [*bwrap, "--ro-bind", str(mnt), "/repo"]
        out = fields(run_sandboxed(launcher, ["sh", "-c", script, "sandbox", *EXACT]).stdout)

        assert int(out["pid"][0]) <= 2  # bwrap's own init is 1
        assert interfaces(out) == ["lo"]
        (mountinfo,) = out["mountinfo"]
        options, super_options = mountinfo.split(" - ")
        assert super_options.split()[0] == "fuse.artifactfs", mountinfo
        assert "ro" in options.split()[5].split(","), mountinfo
        for path, expected in EXACT.items():
            assert base64.b64decode(out[f"file:{path}"][0]) == expected, path
        assert out["sha256"] == [f"{hashlib.sha256(BIG).hexdigest()}  data/big.bin"]
        with open("/proc/self/mountinfo") as table:  # nothing of the sandbox on the host
            assert "/repo" not in [line.split()[4] for line in table]
        assert mount.xattr("cached", mnt / "data" / "big.bin") == str(len(BIG))


def test_a_sandbox_killed_while_reading_a_cold_file_leaves_the_mount_serving(
    daemon: GitDaemon, sample: Repo, mnt: Path, home: Path
) -> None:
    proxy = GitProxy(daemon.port)
    readers = 'sha256sum "$1/data/big.bin" & cat "$1/data/big.bin" > /dev/null & wait'
    try:
        with mounted(daemon.url("sample.git", proxy.port), mnt, home) as mount:
            assert (mnt / "README.md").read_bytes() == b"# sample\n"
            assert mount.xattr("cached", mnt / "data" / "big.bin") == "0"
            proxy.hold()  # the fetch of big.bin stalls at the server: the readers wait in FUSE
            accepted = proxy.accepted
            with sandboxed(UNSHARE, ["sh", "-c", readers, "sandbox", str(mnt)]) as sandbox:
                init = sandbox.find_init()

                def readers_blocked() -> bool:
                    inside = [p for p in sandbox.processes() if p != init]
                    return len(inside) == 2 and all(blocked_in_fuse(p) for p in inside)

                wait_for(readers_blocked, 10, "both readers to wait in FUSE")
                wait_for(lambda: proxy.accepted > accepted, 10, "the fetch to reach the server")
                assert len(sandbox.seen) == 3

                os.kill(init, signal.SIGKILL)
                assert sandbox.launcher.wait(10) != 0  # unshare reports its child's death
                wait_for(lambda: not sandbox.processes(), 10, "every process of the sandbox to end")
            assert sandbox.namespace is not None
            assert not any(pid_namespace(pid) == sandbox.namespace for pid in sandbox.seen)

            proxy.release()
            mount.check_alive()
            assert not is_stale(mnt)
            assert (mnt / "data" / "big.bin").read_bytes() == BIG  # the host, afterwards
            report = probe(mnt, daemon.port, ["data/big.bin", "README.md"])  # a new sandbox
            files = report["files"]
            assert isinstance(files, dict)
            assert base64.b64decode(files[str(mnt / "data/big.bin")]) == BIG
            assert base64.b64decode(files[str(mnt / "README.md")]) == b"# sample\n"
            mount.check_alive()
            assert "Traceback" not in mount.stderr()
        assert mount.process.returncode == 0, mount.stderr()  # unmounted and ended cleanly
    finally:
        proxy.stop()
