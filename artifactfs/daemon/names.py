"""What a repository name may be: it becomes a path component and a socket name."""

from __future__ import annotations

import re

from ..errors import UserError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        shown = name if len(name) <= 80 else name[:80] + "..."
        raise UserError(
            f"not a valid repository name: {shown!r} (1-64 letters, digits, '.', '_' or '-',"
            " starting with a letter or digit)"
        )
    return name
