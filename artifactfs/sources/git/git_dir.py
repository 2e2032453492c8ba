"""The small files of a git directory, written as git itself would read them.

Every file is written whole to a temporary in its directory, synced and renamed into place,
so a crash leaves the old file or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ...errors import UserError
from ...overlay.journal import hook_files_of
from ...overlay.journal import hook_script as journal_hook_script
from ..spec import check_ref

BASE_FILE = "artifactfs-base"
"""Ours, in the git directory: the commit (and branch) it was made for."""
HOOK_FILE = "artifactfs-fsmonitor"
"""Ours, in the git directory: git's fsmonitor hook, answered from the overlay's journal."""
CAS_REMOTE_FILE = "artifactfs-cas-remote"
"""Ours, in the git directory: the promisor remote served from the CAS (an ``ext::`` command)."""
IDENTITY = b"artifactfs <artifactfs@localhost>"
"""Who the reflog lines we write name."""
_GIT_SHELL_SPECIALS = re.compile(r"[|&;<>()$`\\\"' \t\n*?\[#~=%]")
"""What makes git hand a command to the shell instead of running it directly."""


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    temp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp, mode)
        os.replace(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


@dataclass(frozen=True)
class Base:
    """What ``artifactfs-base`` records."""

    commit: str
    branch: str | None
    """The local branch we made for it; None: HEAD detached at the commit."""
    depth: int = 1
    """The commits of history fetched for it (``--depth``; 1 in a base written before)."""


def read_base(git_dir: Path) -> Base | None:
    """The base recorded in ``git_dir``; None if there is none (or it is unreadable)."""
    try:
        data = json.loads((git_dir / BASE_FILE).read_text("utf-8"))
        commit = data["commit"]
        branch = data.get("branch")
        depth = data.get("depth", 1)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if not isinstance(commit, str) or not (branch is None or isinstance(branch, str)):
        return None
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        depth = 1
    return Base(commit, branch, depth)


def write_base(git_dir: Path, base: Base) -> None:
    fields: dict[str, object] = {"commit": base.commit, "branch": base.branch}
    if base.depth != 1:
        fields["depth"] = base.depth
    text = json.dumps(fields) + "\n"
    write_atomic(git_dir / BASE_FILE, text.encode())


def valid_branch(name: str | None) -> str | None:
    """``name`` if git would take it as a branch name (it may come from a server), else None."""
    if name is None or name == "HEAD" or name.startswith("-"):
        return None
    try:
        check_ref(name)
    except UserError:
        return None
    return name


def _quoted(value: str) -> str:
    if "\n" in value or "\0" in value:
        raise ValueError(f"a git config value cannot hold a newline: {value[:80]!r}")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def config_section(name: str, subsection: str | None, keys: list[tuple[str, str]]) -> bytes:
    """One more section of a ``config`` (``[name "subsection"]``), its values quoted."""
    header = f"[{name}]" if subsection is None else f"[{name} {_quoted(subsection)}]"
    return "".join(
        [header + "\n", *(f"\t{key} = {_quoted(value)}\n" for key, value in keys)]
    ).encode()


@dataclass(frozen=True)
class ConfigValues:
    url: str
    """The origin, without credentials."""
    hook: Path
    object_format: str
    branch: str | None
    """The local branch that tracks the origin's branch of the same name (None: none)."""
    cas_remote: str | None = None
    """The ``ext::`` URL of the promisor remote served from the CAS (cas_remote.py), if any."""


def config_text(values: ConfigValues) -> bytes:
    """The git directory's ``config``: a non-bare partial clone of ``origin``, with our
    fsmonitor hook and the untracked cache."""
    hook = str(values.hook)
    if _GIT_SHELL_SPECIALS.search(hook):  # git runs it through the shell then
        hook = shlex.quote(hook)
    lines = [
        "[core]",
        "\trepositoryformatversion = 1",
        "\tfilemode = true",
        "\tbare = false",
        "\tlogallrefupdates = true",
        "\ttrustctime = false",
        f"\tfsmonitor = {_quoted(hook)}",
        "\tfsmonitorHookVersion = 2",
        "\tuntrackedCache = true",
        "[extensions]",
        "\tpartialclone = origin",
    ]
    if values.object_format != "sha1":
        lines.append(f"\tobjectformat = {values.object_format}")
    if values.cas_remote is not None:  # first: git asks extensions.partialclone's remote last
        lines += [
            '[remote "artifactfs"]',
            f"\turl = {_quoted(values.cas_remote)}",
            "\tpromisor = true",
            "\tpartialclonefilter = blob:none",
            "\tskipFetchAll = true",
            "\tskipDefaultUpdate = true",
            '[protocol "ext"]',
            "\tallow = user",  # not for submodules: a .gitmodules URL never runs a command
        ]
    lines += [
        '[remote "origin"]',
        f"\turl = {_quoted(values.url)}",
        "\tfetch = +refs/heads/*:refs/remotes/origin/*",
        "\tpromisor = true",
        "\tpartialclonefilter = blob:none",
    ]
    if values.branch is not None:
        lines += [
            f"[branch {_quoted(values.branch)}]",
            "\tremote = origin",
            f"\tmerge = {_quoted('refs/heads/' + values.branch)}",
        ]
    return ("\n".join(lines) + "\n").encode("utf-8")


def package_parent() -> Path:
    """The directory holding the ``artifactfs`` package: what the hook puts on ``sys.path``."""
    return Path(__file__).resolve().parents[3]


def hook_script(journal: Path) -> bytes:
    """git's fsmonitor hook for the overlay whose database is ``journal``: a shell script
    reading the journal's mirror (``overlay/journal.py`` says why not Python)."""
    return journal_hook_script(hook_files_of(journal))


def cas_remote_script(settings: Path, python: str | None = None) -> bytes:
    """The program git runs for the ``artifactfs`` remote (``ext::``): our interpreter,
    isolated (``-I``), serving upload-pack from the CAS (``cas_remote.py``)."""
    code = (
        f"import sys; sys.path.insert(0, {str(package_parent())!r}); "
        "from artifactfs.sources.git.cas_remote import main; "
        f"sys.exit(main([{str(settings)!r}]))"
    )
    interpreter = python or sys.executable
    return (
        "#!/bin/sh\n"
        "# written by artifactfs: a promisor remote served from the local store (upload-pack)\n"
        f"exec {shlex.quote(interpreter)} -I -c {shlex.quote(code)}\n"
    ).encode()


def write_ref(git_dir: Path, name: str, oid: str) -> None:
    """A loose ref (it wins over a packed one of the same name)."""
    path = git_dir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, f"{oid}\n".encode("ascii"))


def write_symref(git_dir: Path, name: str, target: str) -> None:
    path = git_dir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, f"ref: {target}\n".encode())


def read_ref(git_dir: Path, name: str) -> str | None:
    try:
        return (git_dir / name).read_text("utf-8").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def log_ref(git_dir: Path, name: str, old: str | None, new: str, message: str) -> None:
    """Append a reflog line for ``name`` (as git writes them), best effort."""
    zero = "0" * len(new)
    line = (
        f"{old or zero} {new} ".encode()
        + IDENTITY
        + f" {int(time.time())} +0000\t{message}\n".encode()
    )
    path = git_dir / "logs" / name
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as out:
            out.write(line)


def shallow_lines(git_dir: Path, commit: str) -> bytes:
    """The ``shallow`` file with ``commit`` added to the commits it already lists (an older
    base the user's branches may still reach stays a boundary too)."""
    known: list[str] = []
    with contextlib.suppress(OSError):
        known = (git_dir / "shallow").read_text("ascii").split()
    if commit not in known:
        known.append(commit)
    return "".join(f"{line}\n" for line in known).encode("ascii")


def read_shallow(git_dir: Path) -> list[str]:
    with contextlib.suppress(OSError, UnicodeDecodeError):
        return (git_dir / "shallow").read_text("ascii").split()
    return []


def write_shallow(git_dir: Path, commits: list[str]) -> None:
    """``shallow`` listing ``commits``; none: no ``shallow`` (the whole history is here)."""
    if commits:
        write_atomic(git_dir / "shallow", "".join(f"{c}\n" for c in commits).encode("ascii"))
    else:
        with contextlib.suppress(FileNotFoundError):
            (git_dir / "shallow").unlink()


def ext_url(argv: list[str]) -> str:
    """An ``ext::`` remote URL running ``argv`` (git splits it on spaces; ``%`` escapes)."""
    return "ext::" + " ".join(arg.replace("%", "%%").replace(" ", "% ") for arg in argv)
