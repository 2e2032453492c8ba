"""The FUSE mount options, and whether this user may ask for ``allow_other``.

A FUSE mount is visible to the user who mounted it only — not to other users, not even to root
— unless it is mounted with ``allow_other``. Root may always ask for that; anyone else mounts
through the setuid ``fusermount3``, which refuses it unless ``/etc/fuse.conf`` has a line
``user_allow_other``. We read that file the way fusermount3 does and refuse before mounting,
so the user gets one line saying what to change instead of a failed mount and libfuse's noise.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError

FUSE_CONF = Path("/etc/fuse.conf")
_FGETS_LINE = 255
"""fusermount3 reads the file with ``fgets(line, 256, ...)``: longer lines are not parsed."""


def mount_options(allow_other: bool, writable: bool = False) -> set[str]:
    """The options of every artifactfs mount, plus ``allow_other`` when asked for; ``ro``
    unless the mount is a writable workspace.

    ``default_permissions`` stays on, with or without ``allow_other``: the kernel then checks
    the modes we report (owner: the user who mounted; files 0644 or 0755 as git has them,
    directories 0755; the whole mount ``ro``) like on any local file system. Without it the
    kernel checks nothing and leaves every decision to the file system, which would have to
    re-implement permission checks in every handler — and pyfuse3 tells a handler the caller's
    uid and gid but not its supplementary groups, so it could not get them right. With
    ``allow_other`` and no ``default_permissions`` every user could do whatever the handlers
    allow; with it, other users may read and traverse (which is what ``allow_other`` is for:
    a sandbox's users reading a checkout) and never write, also once a writable overlay makes
    the owner's copies writable. It also lets the kernel answer ``access(2)`` itself.
    """
    options = {"fsname=artifactfs", "subtype=artifactfs", "default_permissions"}
    if not writable:
        options.add("ro")
    if allow_other:
        options.add("allow_other")
    return options


def user_allow_other(conf: bytes) -> bool:
    """Whether fusermount3 would find ``user_allow_other`` in a fuse.conf holding ``conf``.

    Mirrors libfuse's ``read_conf``, quirks included (checked against fusermount3 3.14): it
    reads with ``fgets`` into 256 bytes and parses a chunk only if it starts a line and ends
    with its newline. There a ``#`` starts a comment anywhere, surrounding whitespace is
    ignored and the rest must be exactly ``user_allow_other``. So an unterminated last line,
    a line of more than 255 bytes and a line holding a NUL do not count, and the chunk that
    ends such a line is skipped too.
    """
    at_line_start = True
    position = 0
    while position < len(conf):
        newline = conf.find(b"\n", position, position + _FGETS_LINE)
        end = newline + 1 if newline >= 0 else min(position + _FGETS_LINE, len(conf))
        chunk = conf[position:end].split(b"\0", 1)[0]  # what strlen() sees
        position = end
        complete = chunk.endswith(b"\n")
        if at_line_start and complete:
            if chunk.split(b"#", 1)[0].strip() == b"user_allow_other":
                return True
        elif at_line_start:
            at_line_start = False  # too long (or a NUL): the rest of this line is skipped
        elif complete:
            at_line_start = True
    return False


def check_allow_other(conf_path: Path = FUSE_CONF) -> None:
    """Raise ``UserError`` if this process may not mount with ``allow_other``."""
    if os.getuid() == 0:  # fusermount3 checks the real uid; root also mounts without it
        return
    advice = (
        f"--allow-other needs a line 'user_allow_other' in {conf_path} (root can add it);"
        " without --allow-other only you can see the mount"
    )
    try:
        conf = conf_path.read_bytes()  # fusermount3 reads it with our rights, too
    except FileNotFoundError:
        raise UserError(f"{advice}; there is no {conf_path}") from None
    except OSError as exc:
        raise UserError(f"{advice}; cannot read {conf_path}: {exc.strerror}") from None
    if not user_allow_other(conf):
        raise UserError(advice)
