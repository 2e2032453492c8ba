"""The local content-addressed store (CAS) that backs every read."""

from .digests import ALGORITHMS, GIT_SHA1, GIT_SHA256, SHA256, Algorithm, Digest, InvalidDigest
from .store import ContentStore, DigestMismatch, SizeMismatch

__all__ = [
    "ALGORITHMS",
    "GIT_SHA1",
    "GIT_SHA256",
    "SHA256",
    "Algorithm",
    "ContentStore",
    "Digest",
    "DigestMismatch",
    "InvalidDigest",
    "SizeMismatch",
]
