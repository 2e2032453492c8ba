"""The manifest of a checkpoint: what a workspace held, as JSON, checked when read back.

A manifest comes back from a shared bucket, so it is untrusted input: ``parse`` checks every
field it will use to build a path or a row (inode numbers are integers, git directory paths
are relative and free of ``..``, digests are 64 hex digits), and a manifest that fails is
refused whole with one line (``BadManifest``).

Format 1::

    {"format": 1, "commit": "<hex>", "object_format": "sha1", "source": "<display form>",
     "ref": "<the mount's ref or null>",
     "overlay": {"user_version": 2, "columns": [...], "nodes": [[...], ...],
                 "xattrs": [[ino, "<b64 name>", "<b64 value>"], ...], "meta": {...},
                 "upper": {"<ino>": {"sha256": ..., "size": ..., "mode": ..., "mtime_ns": ...,
                                      "xattrs": {"<b64>": "<b64>"}}}},
     "git": {"path": "<the git directory's absolute path on the node that made it>",
             "dirs": {"<rel>": mode}, "files": {"<rel>": {"sha256", "size", "mode",
             "mtime_ns"}}, "links": {"<rel>": "<target>"}}}

The same workspace state always gives the same bytes (no clock in it: the time is the
pointer's), so "did anything change since the last checkpoint" is "is the digest another".
Access times are left out (a read would make a checkpoint differ); a restored file's access
time is its modification time. Node rows keep the columns of the overlay's ``nodes`` table
by name (``columns``); blobs in them (names, symlink targets) are base64. Lower inode
numbers are a snapshot's row numbers, which a commit always gets the same of
(``snapshot/index.py``), so a restore over the same commit on another node means the same
entries.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from typing import Any

FORMAT = 1
_HEX64 = re.compile(r"[0-9a-f]{64}")
_COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_COLUMN = re.compile(r"[a-z_]{1,32}")
BLOB_COLUMNS = ("name", "target")
"""Columns of ``nodes`` that hold bytes (base64 in the manifest)."""
MAX_TARGET = 4096


class BadManifest(ValueError):
    """A manifest (or a pointer) that is not what we write."""


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int
    mode: int
    mtime_ns: int
    xattrs: dict[bytes, bytes]


@dataclass
class Manifest:
    commit: str
    object_format: str
    source: str
    ref: str | None
    user_version: int
    columns: list[str]
    nodes: list[list[Any]]
    xattrs: list[tuple[int, bytes, bytes]]
    meta: dict[str, str]
    upper: dict[int, FileEntry]
    git_path: str
    git_dirs: dict[str, int]
    git_files: dict[str, FileEntry]
    git_links: dict[str, str]

    def digests(self) -> set[str]:
        return {e.sha256 for e in self.upper.values()} | {e.sha256 for e in self.git_files.values()}

    def encode(self) -> bytes:
        def entry(e: FileEntry) -> dict[str, Any]:
            return {
                "sha256": e.sha256,
                "size": e.size,
                "mode": e.mode,
                "mtime_ns": e.mtime_ns,
                "xattrs": {_b64(k): _b64(v) for k, v in sorted(e.xattrs.items())},
            }

        document = {
            "format": FORMAT,
            "commit": self.commit,
            "object_format": self.object_format,
            "source": self.source,
            "ref": self.ref,
            "overlay": {
                "user_version": self.user_version,
                "columns": self.columns,
                "nodes": [_encoded_row(self.columns, row) for row in self.nodes],
                "xattrs": [[ino, _b64(n), _b64(v)] for ino, n, v in self.xattrs],
                "meta": self.meta,
                "upper": {str(ino): entry(e) for ino, e in sorted(self.upper.items())},
            },
            "git": {
                "path": self.git_path,
                "dirs": dict(sorted(self.git_dirs.items())),
                "files": {p: entry(e) for p, e in sorted(self.git_files.items())},
                "links": dict(sorted(self.git_links.items())),
            },
        }
        return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _encoded_row(columns: list[str], row: list[Any]) -> list[Any]:
    return [
        _b64(v) if c in BLOB_COLUMNS and v is not None else v
        for c, v in zip(columns, row, strict=True)
    ]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: object) -> bytes:
    if not isinstance(text, str):
        raise BadManifest("a base64 field is not a string")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise BadManifest("a base64 field does not decode") from None


def _int(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadManifest(f"{what} is not an integer")
    return value


def _str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise BadManifest(f"{what} is not a string")
    return value


def _dict(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadManifest(f"{what} is not an object")
    return value


def check_relative(path: str) -> str:
    """A path inside the git directory: relative, no empty, ``.`` or ``..`` part, no NUL."""
    parts = path.split("/")
    if not path or "\0" in path or any(p in ("", ".", "..") for p in parts):
        raise BadManifest(f"not a relative path: {path[:80]!r}")
    return path


def _entry(value: object, what: str) -> FileEntry:
    fields = _dict(value, what)
    digest = _str(fields.get("sha256"), f"{what}'s digest")
    if not _HEX64.fullmatch(digest):
        raise BadManifest(f"{what}'s digest is not a sha256")
    xattrs = {
        _unb64(k): _unb64(v) for k, v in _dict(fields.get("xattrs", {}), f"{what}'s xattrs").items()
    }
    return FileEntry(
        digest,
        _int(fields.get("size"), f"{what}'s size"),
        _int(fields.get("mode"), f"{what}'s mode") & 0o7777,
        _int(fields.get("mtime_ns"), f"{what}'s mtime"),
        xattrs,
    )


def parse(data: bytes) -> Manifest:
    """The manifest in ``data``; ``BadManifest`` if it is not one of ours."""
    try:
        document = _dict(json.loads(data), "the manifest")
    except (ValueError, UnicodeDecodeError):
        raise BadManifest("the manifest is not JSON") from None
    if document.get("format") != FORMAT:
        raise BadManifest(f"unknown manifest format {str(document.get('format'))[:20]!r}")
    commit = _str(document.get("commit"), "the commit")
    if not _COMMIT.fullmatch(commit):
        raise BadManifest("the commit is not a commit id")
    overlay = _dict(document.get("overlay"), "the overlay")
    columns = [_str(c, "a column") for c in overlay.get("columns") or []]
    if not all(_COLUMN.fullmatch(c) for c in columns) or "ino" not in columns:
        raise BadManifest("the overlay's columns are not ours")
    nodes = []
    for row in overlay.get("nodes") or []:
        if not isinstance(row, list) or len(row) != len(columns):
            raise BadManifest("an overlay row does not match its columns")
        values = []
        for column, value in zip(columns, row, strict=True):
            if column in BLOB_COLUMNS and value is not None:
                value = _unb64(value)
                if len(value) > MAX_TARGET or b"\0" in value:
                    raise BadManifest("an overlay name or target is too long or has NUL")
            elif value is not None and not isinstance(value, int | str):
                raise BadManifest(f"overlay column {column} holds a {type(value).__name__}")
            values.append(value)
        if column_value(columns, values, "name") is not None:
            name = column_value(columns, values, "name")
            if isinstance(name, bytes) and (b"/" in name or name in (b".", b"..")):
                raise BadManifest(f"an overlay name is not a name: {name[:80]!r}")
        _int(column_value(columns, values, "ino"), "an overlay inode")
        nodes.append(values)
    xattrs = []
    for item in overlay.get("xattrs") or []:
        if not isinstance(item, list) or len(item) != 3:
            raise BadManifest("an xattr row is not [ino, name, value]")
        xattrs.append((_int(item[0], "an xattr's inode"), _unb64(item[1]), _unb64(item[2])))
    meta = {
        _str(k, "a meta key"): _str(v, "a meta value")
        for k, v in _dict(overlay.get("meta", {}), "the overlay's meta").items()
    }
    upper = {}
    for key, value in _dict(overlay.get("upper", {}), "the upper files").items():
        if not key.isdigit():
            raise BadManifest(f"an upper file is not named by an inode: {key[:40]!r}")
        upper[int(key)] = _entry(value, f"upper file {key}")
    git = _dict(document.get("git", {}), "the git directory")
    dirs = {
        check_relative(_str(p, "a git directory")): _int(m, "a mode") & 0o7777
        for p, m in _dict(git.get("dirs", {}), "the git directories").items()
    }
    files = {
        check_relative(p): _entry(v, f"git file {p[:80]!r}")
        for p, v in _dict(git.get("files", {}), "the git files").items()
    }
    links = {}
    for p, target in _dict(git.get("links", {}), "the git links").items():
        target = _str(target, "a link target")
        if len(target) > MAX_TARGET or "\0" in target:
            raise BadManifest("a git link target is too long or has NUL")
        links[check_relative(p)] = target
    _check_no_path_crosses_a_link(links, [*dirs, *files])
    ref = document.get("ref")
    return Manifest(
        commit=commit,
        object_format=_str(document.get("object_format", "sha1"), "the object format"),
        source=_str(document.get("source", ""), "the source"),
        ref=None if ref is None else _str(ref, "the ref"),
        user_version=_int(overlay.get("user_version", 0), "the overlay's version"),
        columns=columns,
        nodes=nodes,
        xattrs=xattrs,
        meta=meta,
        upper=upper,
        git_path=_str(git.get("path", ""), "the git directory's path"),
        git_dirs=dirs,
        git_files=files,
        git_links=links,
    )


def _check_no_path_crosses_a_link(links: dict[str, str], paths: list[str]) -> None:
    """A restore creates links last; still, no directory or file may lie below a link (it
    would be written wherever the link points)."""
    for path, at_too in [*((p, True) for p in paths), *((p, False) for p in links)]:
        parts = path.split("/")
        for end in range(1, len(parts) + at_too):
            if "/".join(parts[:end]) in links:
                raise BadManifest(f"git path {path[:80]!r} lies at or below a symbolic link")


def column_value(columns: list[str], row: list[Any], column: str) -> Any:
    return row[columns.index(column)] if column in columns else None


@dataclass(frozen=True)
class Pointer:
    """What ``checkpoints/REF`` holds: the manifest's digest and what it is of."""

    manifest: str
    commit: str
    created: str

    def encode(self) -> bytes:
        return json.dumps(
            {"manifest": f"sha256:{self.manifest}", "commit": self.commit, "created": self.created},
            sort_keys=True,
        ).encode()


def parse_pointer(data: bytes) -> Pointer:
    try:
        document = _dict(json.loads(data), "the pointer")
    except (ValueError, UnicodeDecodeError):
        raise BadManifest("the checkpoint pointer is not JSON") from None
    manifest = _str(document.get("manifest"), "the pointer's manifest")
    algorithm, _, digest = manifest.partition(":")
    if algorithm != "sha256" or not _HEX64.fullmatch(digest):
        raise BadManifest("the checkpoint pointer names no sha256 manifest")
    commit = _str(document.get("commit", ""), "the pointer's commit")
    return Pointer(digest, commit, _str(document.get("created", ""), "the pointer's time"))
