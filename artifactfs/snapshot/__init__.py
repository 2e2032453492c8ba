"""Snapshots: the immutable, persisted index of what one commit's tree contains."""

from .entries import Kind, NewEntry, RefusedEntry
from .index import ROOT_INODE, DirectoryListing, Row, SnapshotIndex, SnapshotMeta

__all__ = [
    "ROOT_INODE",
    "DirectoryListing",
    "Kind",
    "NewEntry",
    "RefusedEntry",
    "Row",
    "SnapshotIndex",
    "SnapshotMeta",
]
