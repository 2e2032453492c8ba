"""Keep credentials out of everything we print, log or store."""

from __future__ import annotations

import re

# greedy up to the last "@" before the path: a password may itself contain "@"
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s]*@")


def mask_userinfo(text: str) -> str:
    """Replace the ``user:secret@`` part of every URL in ``text`` by ``***@``."""
    return _USERINFO.sub(r"\g<scheme>***@", text)
