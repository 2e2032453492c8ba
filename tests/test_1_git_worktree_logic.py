"""Pure logic of a writable git mount's git directory (sources/git/git_dir.py, git_index.py,
remote.branch_for, spec.strip_credentials)."""

from __future__ import annotations

import os
import sqlite3
import struct
import subprocess
from pathlib import Path

from dulwich.index import SerializedIndexEntry
from dulwich.objects import ObjectID

from artifactfs.overlay import journal
from artifactfs.sources.git.git_dir import (
    Base,
    ConfigValues,
    config_text,
    ext_url,
    hook_script,
    read_base,
    shallow_lines,
    valid_branch,
    write_base,
)
from artifactfs.sources.git.git_index import fsmonitor_extension, index_mtime_ns
from artifactfs.sources.git.remote import branch_for
from artifactfs.sources.spec import strip_credentials


def test_credentials_never_reach_the_git_directory() -> None:
    assert strip_credentials("https://TOKEN@example.com/r.git") == "https://example.com/r.git"
    assert strip_credentials("https://u:p@example.com:8443/r") == "https://example.com:8443/r"
    assert strip_credentials("ssh://git:pw@example.com/r") == "ssh://git@example.com/r"
    assert strip_credentials("ssh://git@example.com/r") == "ssh://git@example.com/r"
    assert strip_credentials("git://example.com/r") == "git://example.com/r"
    assert strip_credentials("git@example.com:r.git") == "git@example.com:r.git"
    assert strip_credentials("/srv/r.git") == "/srv/r.git"
    assert strip_credentials("https://u:p@[::1]:9/r") == "https://[::1]:9/r"


def test_the_branch_a_ref_names() -> None:
    refs = {
        b"HEAD": b"1" * 40,
        b"refs/heads/main": b"1" * 40,
        b"refs/heads/dev": b"2" * 40,
        b"refs/tags/v1": b"3" * 40,
    }
    symrefs = {b"HEAD": b"refs/heads/trunk"}
    assert branch_for(None, refs, symrefs) == "trunk"  # the origin's default
    assert branch_for(None, refs, {}) is None  # not told
    assert branch_for("dev", refs, symrefs) == "dev"
    assert branch_for("refs/heads/dev", refs, symrefs) == "dev"
    assert branch_for("v1", refs, symrefs) is None  # a tag: detached
    assert branch_for("a" * 40, refs, symrefs) is None  # a commit: detached


def test_branch_names_from_a_server_are_checked() -> None:
    assert valid_branch("main") == "main"
    assert valid_branch("feature/x") == "feature/x"
    for bad in (None, "HEAD", "-x", "../x", "a..b", "x.lock", "a b", ""):
        assert valid_branch(bad) is None


def test_config_is_what_git_reads(tmp_path: Path) -> None:
    values = ConfigValues(
        url='https://example.com/a "quoted" \\ repo',
        hook=Path("/state/work space/git/artifactfs-fsmonitor"),
        object_format="sha1",
        branch="main",
    )
    config = tmp_path / "config"
    config.write_bytes(config_text(values))

    def get(key: str) -> str:
        out = subprocess.run(
            ["git", "config", "-f", str(config), key], capture_output=True, check=True
        )
        return out.stdout.decode().rstrip("\n")

    assert get("remote.origin.url") == values.url
    # git runs a hook path with a space through the shell: quoted for it
    assert get("core.fsmonitor") == "'/state/work space/git/artifactfs-fsmonitor'"
    assert get("core.bare") == "false"
    assert get("core.trustctime") == "false"
    assert get("branch.main.merge") == "refs/heads/main"
    plain = ConfigValues("git://h/r", Path("/s/git/artifactfs-fsmonitor"), "sha256", None)
    config.write_bytes(config_text(plain))
    assert get("core.fsmonitor") == "/s/git/artifactfs-fsmonitor"
    assert get("extensions.objectformat") == "sha256"


def run_hook(script: Path, *argv: str) -> tuple[int, bytes, bytes]:
    result = subprocess.run([str(script), *argv], capture_output=True, check=False)
    return result.returncode, result.stdout, result.stderr


def test_the_shell_hook_answers_what_the_journal_says(tmp_path: Path) -> None:
    """The hook (POSIX shell) against ``journal.changed_since``: the same token, and the same
    paths for every token, over several segments and paths no shell should mangle."""
    database = tmp_path / "work's $dir" / "overlay.sqlite"
    database.parent.mkdir()
    hook = tmp_path / "hook"
    hook.write_bytes(hook_script(database))
    hook.chmod(0o755)
    assert run_hook(hook, "2", "artifactfs:x:0") == (1, b"", b"")  # no journal yet: quietly

    connection = sqlite3.connect(database)
    with connection:
        journal.ensure(connection)
    files = journal.HookFiles(journal.hook_files_of(database))
    files.rebuild(connection)
    odd = [b"a b", b"it's", b"*", b"-n", b"new\nline", b"\xff\xfe", b"d/", b"$HOME"]
    tokens = ["none", "artifactfs:other:0", "artifactfs:x", files.token()]
    for round_ in range(3):
        for index in range(journal.SEGMENT_RECORDS + 5):  # past a segment's size
            with connection:
                paths = [odd[index % len(odd)], f"r{round_}/f{index}".encode()]
                files.append(journal.record(connection, paths), paths)
        tokens.append(files.token())
    files.close()
    connection.close()
    directory = journal.hook_files_of(database)
    assert len([e for e in os.scandir(directory) if e.name.isdigit()]) >= 6
    for token in tokens:
        code, out, err = run_hook(hook, "2", token)
        assert (code, err) == (0, b""), err
        now, *paths = out.split(b"\0")
        assert paths[-1] == b""  # every path NUL-terminated
        expected_now, expected = journal.changed_since(directory, token)
        assert now.decode() == expected_now
        assert sorted(set(paths[:-1])) == expected, token
    assert run_hook(hook, "1", tokens[-1])[0] == 1  # only protocol 2 is spoken


def test_fsmonitor_extension_bytes() -> None:
    extension = fsmonitor_extension("artifactfs:abc:0")
    assert extension.signature == b"FSMN"
    empty_ewah = struct.pack(">IIQI", 0, 1, 0, 0)
    assert extension.data == (
        struct.pack(">I", 2) + b"artifactfs:abc:0\0" + struct.pack(">I", 20) + empty_ewah
    )


def _entry(mtime: tuple[int, int]) -> SerializedIndexEntry:
    return SerializedIndexEntry(
        b"f", mtime, mtime, 0, 1, 0o100644, 0, 0, 1, ObjectID(b"a" * 40), 0, 0
    )


def test_the_index_is_newer_than_every_entry() -> None:
    now = 1_800_000_000 * 10**9
    assert index_mtime_ns([_entry((1_700_000_000, 5))], now) == now
    future = (1_900_000_000, 500)  # a commit dated ahead of the clock
    assert index_mtime_ns([_entry(future)], now) == (1_900_000_001 * 10**9 + 500)


def test_shallow_and_base_files(tmp_path: Path) -> None:
    assert shallow_lines(tmp_path, "a" * 40) == b"a" * 40 + b"\n"
    (tmp_path / "shallow").write_bytes(b"b" * 40 + b"\n")
    assert shallow_lines(tmp_path, "a" * 40) == b"b" * 40 + b"\n" + b"a" * 40 + b"\n"
    assert shallow_lines(tmp_path, "b" * 40) == b"b" * 40 + b"\n"
    assert read_base(tmp_path) is None
    write_base(tmp_path, Base("c" * 40, None))
    assert read_base(tmp_path) == Base("c" * 40, None)
    (tmp_path / "artifactfs-base").write_text("{not json")
    assert read_base(tmp_path) is None


def test_the_cas_remote_comes_first_and_only_for_the_user(tmp_path: Path) -> None:
    url = ext_url(["/opt/my python/bin/python", "-I", "-m", "x", "/s/100%/settings.json"])
    assert url == "ext::/opt/my% python/bin/python -I -m x /s/100%%/settings.json"
    values = ConfigValues("git://h/r", Path("/s/git/hook"), "sha1", "main", cas_remote=url)
    config = tmp_path / "config"
    config.write_bytes(config_text(values))
    listed = subprocess.run(
        ["git", "config", "-f", str(config), "--get-regexp", r"remote\..*\.promisor|protocol"],
        capture_output=True,
        check=True,
    ).stdout.decode()
    assert listed.splitlines() == [
        "remote.artifactfs.promisor true",
        "protocol.ext.allow user",
        "remote.origin.promisor true",
    ]


def test_the_shallow_boundary_comes_from_the_commits_themselves() -> None:
    from artifactfs.sources.git.git_objects import complete_commits, shallow_boundary

    a, b, c, d, m, x = ("a" * 40, "b" * 40, "c" * 40, "d" * 40, "e" * 40, "f" * 40)
    # d <- c <- b, and a merge m of b and x, x's parent missing: a root commit is complete
    commits = {m: [b, x], b: [c], c: [d], x: ["9" * 40], d: []}
    assert shallow_boundary(commits) == [x]
    assert complete_commits(commits) == {m, b, c, d}
    assert shallow_boundary({b: [c], a: [d]}) == [a, b]  # sorted
    assert shallow_boundary({}) == []


def test_the_depth_a_base_records(tmp_path: Path) -> None:
    from artifactfs.sources.git.git_dir import BASE_FILE, Base, read_base, write_base

    write_base(tmp_path, Base("a" * 40, "main"))
    assert (tmp_path / BASE_FILE).read_text() == f'{{"commit": "{"a" * 40}", "branch": "main"}}\n'
    assert read_base(tmp_path) == Base("a" * 40, "main", 1)
    write_base(tmp_path, Base("a" * 40, None, 5))
    assert read_base(tmp_path) == Base("a" * 40, None, 5)
    for odd in ("0", "-3", '"7"', "true", "null"):
        (tmp_path / BASE_FILE).write_text(f'{{"commit": "{"b" * 40}", "depth": {odd}}}')
        assert read_base(tmp_path) == Base("b" * 40, None, 1)
