"""The parts of artifactfs the benchmarks use as a library rather than as a program: imported
here and nowhere else in the benchmark code, so that moving a module in ``artifactfs/`` means
fixing the benchmarks in this one file."""

from __future__ import annotations

from artifactfs.cas import ContentStore, Digest
from artifactfs.cas.digests import GIT_SHA1, SHA256
from artifactfs.mount.kernel_read_ahead import set_read_ahead
from artifactfs.sources import parse_source
from artifactfs.sources.git import object_info
from artifactfs.sources.git.packs import iter_objects, received_pack
from artifactfs.sources.git.spec import GitSourceSpec
from artifactfs.sources.git.transport import open_client

__all__ = [
    "GIT_SHA1",
    "SHA256",
    "ContentStore",
    "Digest",
    "GitSourceSpec",
    "iter_objects",
    "object_info",
    "open_client",
    "parse_source",
    "received_pack",
    "set_read_ahead",
]
