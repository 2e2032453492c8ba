"""git's cache tree (the index's ``TREE`` extension), written with the index of a new git
directory, so that git compares the index with ``HEAD`` one directory at a time.

Without it, every ``git status`` walks ``HEAD``'s whole tree against the index entry by entry
(``diff-index --cached``: 5 ms of a 40 ms status on Django) and ``git commit`` hashes every
tree again; a checkout's index has one, written by the checkout. Our index describes the
snapshot's tree exactly, so the cache is known before git runs: every directory's tree id is
in the snapshot, with the number of index entries below it.

The layout follows git's index format documentation (``gitformat-index``, "Cache tree"): for
each directory, depth first, its name (the root's is empty) and a NUL, then in ASCII the
number of index entries it covers, a space, the number of its subdirectories and a newline,
then its raw tree id; a directory whose id is not known says ``-1`` entries and no id (git then
recomputes that one, and keeps the others). The root's id is the commit's tree, which the
snapshot does not keep, so the root is written invalid; so is every directory holding a path
the index leaves out (its count and id would not describe the index).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dulwich.index import IndexExtension

SIGNATURE = b"TREE"


@dataclass
class CachedTree:
    """One directory of the snapshot as the cache tree records it."""

    name: bytes
    oid: str | None
    """Its tree's id in hex; None where it is not known."""
    entries: int = 0
    """Index entries directly in it."""
    complete: bool = True
    """False once a path in it is left out of the index."""
    subtrees: list[CachedTree] = field(default_factory=list)


def cache_tree_extension(root: CachedTree) -> IndexExtension:
    """The ``TREE`` extension for ``root`` and everything below it."""
    totals = _totals(root)
    out: list[bytes] = []
    stack = [root]
    while stack:
        tree = stack.pop()
        count, valid = totals[id(tree)]
        out.append(b"%s\0%d %d\n" % (tree.name, count if valid else -1, len(tree.subtrees)))
        if valid:
            assert tree.oid is not None
            out.append(bytes.fromhex(tree.oid))
        stack.extend(reversed(tree.subtrees))
    return IndexExtension(SIGNATURE, b"".join(out))


def _totals(root: CachedTree) -> dict[int, tuple[int, bool]]:
    """Each tree's entry count (its own and its subtrees') and whether it is valid (its id is
    known, nothing below it is left out), by ``id()``; iterative, as trees can be deep."""
    order: list[CachedTree] = []
    stack = [root]
    while stack:
        tree = stack.pop()
        order.append(tree)
        stack.extend(tree.subtrees)
    totals: dict[int, tuple[int, bool]] = {}
    for tree in reversed(order):  # every subtree before its parent
        count, valid = tree.entries, tree.complete and tree.oid is not None
        for sub in tree.subtrees:
            sub_count, sub_valid = totals[id(sub)]
            count += sub_count
            valid = valid and sub_valid
        totals[id(tree)] = (count, valid)
    return totals
