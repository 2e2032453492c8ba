"""Digests the CAS is keyed by, and the rules that make them safe to turn into paths.

A digest names content by what the origin vouches for: a git blob id (sha1, or sha256 in
sha256 repositories), or the plain sha256 the Hub gives for LFS files. Every digest is
validated when it is constructed, so no path is ever built from an unchecked name.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Protocol


class Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...

    def hexdigest(self) -> str: ...


@dataclass(frozen=True)
class Algorithm:
    """How a digest of this kind is computed from content."""

    name: str
    """The directory name under ``cas/`` (also the prefix a person sees in logs)."""
    hashlib_name: str
    hex_length: int
    git_object_header: bool
    """True: hash ``b"blob <size>\\0" + content`` (a git blob id); False: hash the content."""

    def new_hasher(self, size: int | None) -> Hasher:
        hasher = hashlib.new(self.hashlib_name)
        if self.git_object_header:
            if size is None:
                raise ValueError(f"{self.name} digests need the content size up front")
            hasher.update(b"blob %d\0" % size)
        return hasher


GIT_SHA1 = Algorithm("git-sha1", "sha1", 40, git_object_header=True)
GIT_SHA256 = Algorithm("git-sha256", "sha256", 64, git_object_header=True)
SHA256 = Algorithm("sha256", "sha256", 64, git_object_header=False)

ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (GIT_SHA1, GIT_SHA256, SHA256)}

_HEX = re.compile(r"[0-9a-f]+")


class InvalidDigest(ValueError):
    """A digest name that is not exactly lowercase hex of its algorithm's length."""


@dataclass(frozen=True)
class Digest:
    """A validated (algorithm, lowercase hex) pair."""

    algorithm: Algorithm
    hex: str

    def __post_init__(self) -> None:
        if ALGORITHMS.get(self.algorithm.name) is not self.algorithm:
            raise InvalidDigest(f"unknown digest algorithm {self.algorithm.name[:40]!r}")
        if len(self.hex) != self.algorithm.hex_length or not _HEX.fullmatch(self.hex):
            raise InvalidDigest(f"not a {self.algorithm.name} digest: {self.hex[:80]!r}")

    @classmethod
    def parse(cls, algorithm_name: str, hex_digest: str) -> Digest:
        algorithm = ALGORITHMS.get(algorithm_name)
        if algorithm is None:
            raise InvalidDigest(f"unknown digest algorithm {algorithm_name[:40]!r}")
        return cls(algorithm, hex_digest)

    def __str__(self) -> str:
        return f"{self.algorithm.name}:{self.hex}"


def digest_of(algorithm: Algorithm, data: bytes) -> Digest:
    """The digest of in-memory content."""
    hasher = algorithm.new_hasher(len(data))
    hasher.update(data)
    return Digest(algorithm, hasher.hexdigest())


def git_blob_algorithm(object_format: str) -> Algorithm:
    """The CAS algorithm for blobs of a git repository with this object format."""
    if object_format == "sha1":
        return GIT_SHA1
    if object_format == "sha256":
        return GIT_SHA256
    raise InvalidDigest(f"unknown git object format {object_format[:40]!r}")
