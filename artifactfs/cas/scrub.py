"""Re-hash what the store holds and quarantine what does not match (``artifactfs verify``).

Reads check small blobs on their first open in each worker, and every blob's size on every
open; a flipped byte in a large blob that nobody reopens is found here. Blocking: the command
line runs it in its own process, while mounts keep serving (a blob quarantined under a reader
is fetched again on its next open).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .digests import ALGORITHMS, Digest, InvalidDigest
from .store import ContentStore


@dataclass
class Damaged:
    digest: Digest
    actual: str
    quarantined: Path | None


@dataclass
class ScrubReport:
    checked: int = 0
    bytes: int = 0
    missing: int = 0
    """Digests asked about that are not in the store (never fetched, or evicted)."""
    damaged: list[Damaged] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        return {
            "checked": self.checked,
            "bytes": self.bytes,
            "missing": self.missing,
            "damaged": [
                {
                    "digest": str(d.digest),
                    "actual": d.actual,
                    "quarantined": str(d.quarantined) if d.quarantined else None,
                }
                for d in self.damaged
            ],
        }


Progress = Callable[[ScrubReport, int], None]
"""Told the report so far and how many digests there are in all, after each blob."""


def scrub(
    store: ContentStore, digests: Iterable[Digest], progress: Progress | None = None
) -> ScrubReport:
    """Hash every blob of ``digests`` the store holds; quarantine those that do not match."""
    wanted = list(dict.fromkeys(digests))
    report = ScrubReport()
    for digest in wanted:
        size = store.size_of(digest)
        actual = store.hash_published(digest) if size is not None else None
        if actual is None:
            report.missing += 1
        else:
            report.checked += 1
            report.bytes += size or 0
            if actual != digest.hex:
                report.damaged.append(Damaged(digest, actual, store.quarantine(digest)))
        if progress is not None:
            progress(report, len(wanted))
    return report


def published(store: ContentStore) -> Iterator[Digest]:
    """Every blob published in the store (names that are not digests are skipped)."""
    for name, algorithm in ALGORITHMS.items():
        for path in sorted((store.root / name).glob("[0-9a-f][0-9a-f]/*")):
            try:
                yield Digest(algorithm, path.name)
            except InvalidDigest:
                continue  # a temporary, or something that is not ours
