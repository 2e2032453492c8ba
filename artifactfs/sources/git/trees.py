"""Turn the trees of one commit, as a server sent them, into validated directory listings.

Tree data is untrusted. Entries with unsafe names or unknown modes are refused with a log line
naming the path and the reason, and left out; the rest of the tree is still shown. A tree that
would expand to more entries than ``max_entries`` (a "tree bomb": small trees referenced many
times) or nest deeper than ``max_depth`` is refused as a whole.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

from dulwich.errors import ObjectFormatException
from dulwich.objects import parse_tree

from ...errors import SourceError
from ...snapshot.entries import Kind, RefusedEntry, check_name, kind_of_git_mode, printable

log = logging.getLogger(__name__)

MAX_ENTRIES = 5_000_000
MAX_DEPTH = 1024


@dataclass(frozen=True)
class TreeChild:
    name: bytes
    kind: Kind
    oid: str
    path: bytes
    """Where this entry first appeared, for log lines."""


@dataclass
class CommitTrees:
    """The validated listings of every distinct tree reachable from one root tree."""

    root: str
    listings: dict[str, list[TreeChild]] = field(default_factory=dict)

    def blobs(self, kinds: tuple[Kind, ...]) -> dict[str, bytes]:
        """Distinct blob ids of the given kinds, each with the first path it appears at."""
        found: dict[str, bytes] = {}
        for children in self.listings.values():
            for child in children:
                if child.kind in kinds:
                    found.setdefault(child.oid, child.path)
        return found


def index_trees(
    root: str,
    raw_trees: dict[str, bytes],
    oid_length: int,
    max_entries: int = MAX_ENTRIES,
    max_depth: int = MAX_DEPTH,
) -> CommitTrees:
    """Parse and validate every tree under ``root`` (blocking)."""
    result = CommitTrees(root)
    queue: deque[tuple[str, bytes, int]] = deque([(root, b"", 0)])
    while queue:
        tree_id, path, depth = queue.popleft()
        if tree_id in result.listings:
            continue
        if depth > max_depth:
            raise SourceError(f"tree nests deeper than {max_depth} levels at {printable(path)}")
        raw = raw_trees.get(tree_id)
        if raw is None:
            raise SourceError(f"the server did not send tree {tree_id} ({printable(path) or '/'})")
        children = _validated_children(raw, oid_length, path)
        result.listings[tree_id] = children
        for child in children:
            if child.kind is Kind.DIRECTORY:
                queue.append((child.oid, child.path, depth + 1))
    total = _expanded_size(root, result.listings)
    if total > max_entries:
        raise SourceError(f"the tree expands to {total} entries (limit {max_entries})")
    return result


def _validated_children(raw: bytes, oid_length: int, directory: bytes) -> list[TreeChild]:
    children: list[TreeChild] = []
    seen: set[bytes] = set()
    try:
        parsed = list(parse_tree(raw, sha_len=oid_length))
    except (ValueError, IndexError, ObjectFormatException) as exc:
        raise SourceError(f"malformed tree at {printable(directory) or '/'}: {exc}") from None
    for name, mode, hexsha in parsed:
        path = directory + b"/" + name if directory else name
        try:
            check_name(name)
            kind = kind_of_git_mode(mode)
            if name in seen:
                raise RefusedEntry("duplicate name in tree")
        except RefusedEntry as refused:
            log.warning("refused tree entry %s: %s", printable(path), refused)
            continue
        seen.add(name)
        oid = hexsha.decode("ascii") if isinstance(hexsha, bytes) else str(hexsha)
        children.append(TreeChild(name, kind, oid, path))
    return children


def _expanded_size(root: str, listings: dict[str, list[TreeChild]]) -> int:
    """Entries the snapshot would hold, counting shared subtrees once per place they appear."""
    sizes: dict[str, int] = {}
    started: set[str] = set()
    stack: list[tuple[str, bool]] = [(root, False)]
    while stack:  # post-order over the DAG of distinct trees, without recursion
        tree_id, children_done = stack.pop()
        children = listings.get(tree_id, [])
        if children_done:
            sizes[tree_id] = sum(
                1 + (sizes.get(c.oid, 0) if c.kind is Kind.DIRECTORY else 0) for c in children
            )
            continue
        if tree_id in started:
            continue
        started.add(tree_id)
        stack.append((tree_id, True))
        stack.extend((c.oid, False) for c in children if c.kind is Kind.DIRECTORY)
    return sizes[root] + 1
