"""What the tests of the store's size cap share: files that are fetched only when read, and
what the store holds at a moment."""

from __future__ import annotations

import contextlib
import random
from pathlib import Path

KiB = 1 << 10


def uncapped_files(count: int, seed: int = 15) -> dict[str, bytes]:
    """Files over 256 KiB, two per directory: nothing is fetched ahead of need (walks.py only
    guesses smaller files), so what is fetched is what the test reads."""
    rng = random.Random(seed)
    return {
        f"d{i // 2:02}/f{i:02}.bin": rng.randbytes(rng.randrange(300 * KiB, 600 * KiB))
        for i in range(count)
    }


def store_bytes(home: Path) -> int:
    """What the store's published git blobs occupy now (temporaries excluded: none is in
    flight once a read has returned)."""
    total = 0
    for path in (home / "cas" / "git-sha1").glob("*/*"):
        if not path.name.startswith("."):
            with contextlib.suppress(FileNotFoundError):  # evicted in the background meanwhile
                total += path.stat().st_size
    return total
