"""Where snapshots and file contents come from: one interface (``base.py``), a registry that
picks the kind from the SOURCE (``registry.py``), and one folder per kind (``git/``, ``hub/``).
"""

from .base import Content, PreparedSnapshot, Source, SourceSettings, SourceSpec
from .registry import open_source, parse_source
from .spec import check_commit_id, check_ref

__all__ = [
    "Content",
    "PreparedSnapshot",
    "Source",
    "SourceSettings",
    "SourceSpec",
    "check_commit_id",
    "check_ref",
    "open_source",
    "parse_source",
]
