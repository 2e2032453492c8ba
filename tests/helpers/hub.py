"""A Hugging Face Hub stand-in on 127.0.0.1: enough of the Hub's HTTP API for the real
``huggingface_hub`` client, repositories built in memory by the tests, and fault injection.

What it serves (``{type}s`` is ``models``, ``datasets`` or ``spaces``; the resolve prefix is empty
for models, ``/datasets`` or ``/spaces`` otherwise; repo ids are ``org/name`` or legacy ``name``)::

    GET  /api/{type}s/{repo_id}[/revision/{rev}][?blobs=true]      repo info, siblings
    GET  /api/{type}s/{repo_id}/tree/{rev}[/{path}]?recursive=&expand=&cursor=   paginated tree
    POST /api/{type}s/{repo_id}/paths-info/{rev}   (form: paths=...&expand=...)
    GET  /api/{type}s/{repo_id}/refs[?include_prs=1]
    HEAD|GET [/datasets|/spaces]/{repo_id}/resolve/{rev}/{path}    file bytes, Range
    GET  /api/agent-harnesses                       (empty registry, see ``running_hub``)

and, on a second port standing for the CDN (``lfs_redirect=True``), ``GET /lfs/{sha256}?...``.

Digests are the Hub's: ``oid``/``blobId`` is the git blob id of what git stores, that is the
content for a regular file and the LFS *pointer* for an LFS file; LFS files also carry ``lfs.oid``
(``sha256`` in ``siblings``) = sha256 of the content, ``lfs.size`` and ``lfs.pointerSize``.
Commit and tree ids are real git ids of the commit and tree objects (LFS files as pointers).

Access is the Hub's too: a request without ``Authorization`` to a missing or private repo gets
401 ``X-Error-Code: RepoNotFound`` (the Hub does not tell which); with the right bearer token a
missing repo is a 404 ``RepoNotFound``; a wrong token is a 401 "Invalid credentials in
Authorization header" without error code, on any repo, public ones included. Gated repos list
and describe themselves to anyone but refuse file content: 401 ``GatedRepo`` anonymously, 403
``GatedRepo`` with a token until ``grant_access``.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import re
import socket
import sys
import threading
import traceback
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode

LFS_SUFFIXES = (".safetensors", ".bin", ".gguf", ".onnx", ".pt", ".h5", ".msgpack")
LFS_THRESHOLD = 1024 * 1024
CHUNK = 256 * 1024
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"

_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_RESOLVE_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_API_SUBPATHS = {"revision", "tree", "refs", "paths-info", "commits", "resolve"}
_SHA = re.compile(r"^[0-9a-f]{40}$")
_EPOCH = datetime(2024, 1, 1, tzinfo=UTC)

Content = bytes | bytearray | memoryview | Path


def git_blob_id(data: bytes) -> str:
    """The git blob id (sha1 of ``blob <len>\\0`` + data), what the Hub calls oid or blobId."""
    digest = hashlib.sha1(b"blob %d\0" % len(data))
    digest.update(data)  # no concatenation: data may be a GiB
    return digest.hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git LFS pointer file git stores in place of an LFS file."""
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    )


def is_lfs_path(path: str, size: int, lfs: Collection[str] | None = None) -> bool:
    """LFS like on the Hub: listed in ``lfs``, else ≥ 1 MiB or a weights-like suffix."""
    if lfs is not None and path in lfs:
        return True
    return size >= LFS_THRESHOLD or path.endswith(LFS_SUFFIXES)


@dataclass(frozen=True)
class HubFile:
    """One file of one commit, with the digests the Hub reports for it."""

    path: str
    size: int
    oid: str
    """git blob id as the Hub reports it: of the content, or of the LFS pointer for LFS files"""
    lfs: bool
    sha256: str | None
    """sha256 of the content, LFS files only (the Hub has no sha256 for regular files)"""
    pointer_size: int | None
    _data: bytes | None = field(repr=False, compare=False)
    _disk: Path | None = field(repr=False, compare=False)

    @property
    def etag(self) -> str:
        """The ETag of a resolve answer, unquoted: sha256 for LFS files, else the git oid."""
        return self.sha256 if self.sha256 is not None else self.oid

    def read(self, start: int = 0, end: int | None = None) -> bytes:
        """Bytes ``[start, end)`` of the content."""
        end = self.size if end is None else end
        return b"".join(bytes(chunk) for chunk in self.chunks(start, end))

    def chunks(self, start: int, end: int) -> Iterator[bytes | memoryview]:
        if self._data is not None:
            view = memoryview(self._data)
            for offset in range(start, end, CHUNK):
                yield view[offset : min(offset + CHUNK, end)]
            return
        assert self._disk is not None
        with self._disk.open("rb") as stream:
            stream.seek(start)
            remaining = end - start
            while remaining > 0:
                chunk = stream.read(min(CHUNK, remaining))
                if not chunk:
                    raise OSError(f"{self._disk} shrank while being served")
                remaining -= len(chunk)
                yield chunk


def _make_file(path: str, content: Content, lfs: Collection[str] | None) -> HubFile:
    data: bytes | None = None
    disk: Path | None = None
    if isinstance(content, Path):
        disk = content
        sha1 = hashlib.sha1()
        sha256 = hashlib.sha256()
        size = content.stat().st_size
        sha1.update(b"blob %d\0" % size)
        with content.open("rb") as stream:
            while chunk := stream.read(1 << 20):
                sha1.update(chunk)
                sha256.update(chunk)
        content_oid = sha1.hexdigest()
    elif isinstance(content, bytes | bytearray | memoryview):
        data = bytes(content)
        size = len(data)
        content_oid = git_blob_id(data)
        sha256 = hashlib.sha256(data)
    else:
        raise TypeError(f"{path}: content must be bytes or a Path, not {type(content).__name__}")
    if is_lfs_path(path, size, lfs):
        digest = sha256.hexdigest()
        pointer = lfs_pointer(digest, size)
        return HubFile(path, size, git_blob_id(pointer), True, digest, len(pointer), data, disk)
    return HubFile(path, size, content_oid, False, None, None, data, disk)


def _build(files: Mapping[str, Content], lfs: Collection[str] | None) -> dict[str, HubFile]:
    built = {}
    for path, content in files.items():
        _check_path(path)
        built[path] = _make_file(path, content, lfs)
    return built


def _check_path(path: str) -> None:
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid path in repository: {path!r}")
    if ".git" in parts:
        raise ValueError(f"invalid path in repository: {path!r}")


@dataclass
class _Commit:
    sha: str
    parent: str | None
    files: dict[str, HubFile]
    trees: dict[str, str]
    """directory path ('' for the root) -> git tree id"""
    date: datetime
    title: str


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    gated: str | bool
    granted: bool = False
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    commits: dict[str, _Commit] = field(default_factory=dict)
    created: datetime = _EPOCH

    def resolve(self, revision: str) -> _Commit | None:
        for prefix, table in (("refs/heads/", self.branches), ("refs/tags/", self.tags)):
            if revision.startswith(prefix) and revision[len(prefix) :] in table:
                return self.commits[table[revision[len(prefix) :]]]
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        if revision in self.tags:
            return self.commits[self.tags[revision]]
        return self.commits.get(revision) if _SHA.match(revision) else None


def _trees(files: Mapping[str, HubFile]) -> dict[str, str]:
    """Git tree ids of every directory ('' is the root), as git computes them (LFS files as
    their pointers)."""
    children: dict[str, dict[str, str | None]] = {"": {}}  # name -> blob oid, None for a dir
    for path in files:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            directory = "/".join(parts[:depth])
            children.setdefault(directory, {})
            children["/".join(parts[: depth - 1])][parts[depth - 1]] = None
    for path, entry in files.items():
        if path in children:
            raise ValueError(f"{path!r} is both a file and a directory")
        parent, _, name = path.rpartition("/")
        children[parent][name] = entry.oid
    trees: dict[str, str] = {}
    for directory in sorted(children, key=lambda d: d.count("/") if d else -1, reverse=True):
        items = children[directory]
        body = b""
        for name in sorted(items, key=lambda n: n + "/" if items[n] is None else n):
            oid = items[name]
            if oid is None:
                mode, oid = b"40000", trees[f"{directory}/{name}" if directory else name]
            else:
                mode = b"100644"
            body += mode + b" " + name.encode() + b"\0" + bytes.fromhex(oid)
        trees[directory] = hashlib.sha1(b"tree %d\0" % len(body) + body).hexdigest()
    return trees


@dataclass
class _Fault:
    kind: str  # status | cut | ignore_range | corrupt
    remaining: int
    path: str | None
    api: bool = False
    status: int = 0
    retry_after: int | float | str | None = None
    after_bytes: int = 0


@dataclass
class _Target:
    """What one request is about, once its path is parsed."""

    repo_type: str
    repo_id: str
    action: str  # info | tree | refs | paths-info | resolve
    revision: str = "main"
    path: str = ""


class HubServer:
    """A threaded Hub stand-in on a free loopback port. See the module docstring for the API
    it speaks; pass ``endpoint=server.endpoint`` to ``HfApi``/``hf_hub_download``.

    ``token``: the one valid bearer token. ``page_size``: entries per tree page.
    ``lfs_redirect``: answer LFS resolves with a 302 to ``cdn_endpoint`` (another port, so
    another origin, like the Hub's CDN) instead of serving the bytes directly.
    """

    def __init__(
        self, *, token: str | None = None, page_size: int = 1000, lfs_redirect: bool = False
    ) -> None:
        self.token = token
        self.page_size = page_size
        self.lfs_redirect = lfs_redirect
        self.requests: list[tuple[str, str, str | None]] = []
        """(method, request target as sent, Range header or None), CDN requests included"""
        self.authorizations: list[tuple[str, str | None]] = []
        """(request target, Authorization header or None) for every request"""
        self.errors: list[str] = []
        """tracebacks of unexpected exceptions in request handlers (should stay empty)"""
        self._lock = threading.Condition(threading.RLock())
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._served: dict[tuple[str, str, str], int] = {}
        self._faults: list[_Fault] = []
        self._stall_armed = False
        self._stall_path: str | None = None
        self._stalled = 0
        self._release = threading.Event()
        self._stopping = False
        self._clock = 0
        self._http = _Server(self, cdn=False)
        self._cdn = _Server(self, cdn=True)
        self.port = int(self._http.server_address[1])
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.cdn_endpoint = f"http://127.0.0.1:{self._cdn.server_address[1]}"
        self._threads = [
            threading.Thread(
                target=server.serve_forever, args=(0.02,), name=f"hub-{name}", daemon=True
            )
            for name, server in (("api", self._http), ("cdn", self._cdn))
        ]
        for thread in self._threads:
            thread.start()

    # ---------------------------------------------------------------- repositories

    def create_repo(
        self,
        repo_id: str,
        files: Mapping[str, Content],
        *,
        repo_type: str = "model",
        private: bool = False,
        gated: bool | str = False,
        lfs: Collection[str] | None = None,
    ) -> str:
        """A new repository whose ``main`` holds ``files``; returns that commit's sha.

        ``gated``: False, True (= "auto"), "auto" or "manual". ``lfs``: paths to store as LFS
        whatever their size. A ``Path`` value is served from disk (for very large files).
        """
        if not _REPO_ID.match(repo_id):
            raise ValueError(f"invalid repo id {repo_id!r}")
        if repo_type not in _RESOLVE_PREFIX:
            raise ValueError(f"invalid repo type {repo_type!r}")
        gated_value = "auto" if gated is True else gated
        if gated_value not in (False, "auto", "manual"):
            raise ValueError(f"invalid gated value {gated!r}")
        built = _build(files, lfs)  # hashing big files: not under the lock
        with self._lock:
            if (repo_type, repo_id) in self._repos:
                raise ValueError(f"{repo_type} {repo_id} already exists")
            repo = _Repo(repo_type, repo_id, private, gated_value, created=self._now())
            commit = self._new_commit(repo, None, built, "Initial commit")
            self._repos[(repo_type, repo_id)] = repo
            repo.branches["main"] = commit.sha
            return commit.sha

    def commit(
        self,
        repo_id: str,
        files: Mapping[str, Content | None],
        *,
        repo_type: str = "model",
        branch: str = "main",
        lfs: Collection[str] | None = None,
        message: str | None = None,
    ) -> str:
        """A new commit on ``branch`` (which must exist) changing ``files``: a value adds or
        replaces the file, ``None`` deletes it. Returns the new sha; older commits stay served."""
        built = _build({p: c for p, c in files.items() if c is not None}, lfs)
        with self._lock:
            repo = self._repo(repo_id, repo_type)
            if branch not in repo.branches:
                raise ValueError(f"{repo_id} has no branch {branch!r} (set_branch creates one)")
            parent = repo.commits[repo.branches[branch]]
            current = dict(parent.files)
            for path, content in files.items():
                if content is None:
                    if path not in current:
                        raise KeyError(f"{path!r} is not in {repo_id}@{branch}")
                    del current[path]
            title = message or f"Update {', '.join(sorted(files))}"
            commit = self._new_commit(repo, parent.sha, current | built, title)
            repo.branches[branch] = commit.sha
            return commit.sha

    def forget_commit(self, repo_id: str, sha: str, *, repo_type: str = "model") -> None:
        """Stop serving ``sha`` (as if the Hub had pruned it): its resolves answer 404."""
        with self._lock:
            repo = self._repo(repo_id, repo_type)
            if sha in repo.branches.values() or sha in repo.tags.values():
                raise ValueError(f"{sha} is still a branch or tag of {repo_id}")
            del repo.commits[sha]

    def set_branch(self, repo_id: str, branch: str, sha: str, *, repo_type: str = "model") -> None:
        """Create or move ``branch`` to the commit ``sha``."""
        with self._lock:
            repo = self._repo(repo_id, repo_type)
            if sha not in repo.commits:
                raise KeyError(f"{repo_id} has no commit {sha}")
            repo.branches[branch] = sha

    def tag(self, repo_id: str, name: str, sha: str, *, repo_type: str = "model") -> None:
        """Create or move the tag ``name`` to the commit ``sha``."""
        with self._lock:
            repo = self._repo(repo_id, repo_type)
            if sha not in repo.commits:
                raise KeyError(f"{repo_id} has no commit {sha}")
            repo.tags[name] = sha

    def grant_access(self, repo_id: str, *, repo_type: str = "model") -> None:
        """The holder of ``token`` may now download from this gated repo."""
        with self._lock:
            self._repo(repo_id, repo_type).granted = True

    def update_repo(
        self,
        repo_id: str,
        *,
        repo_type: str = "model",
        private: bool | None = None,
        gated: bool | str | None = None,
    ) -> None:
        with self._lock:
            repo = self._repo(repo_id, repo_type)
            if private is not None:
                repo.private = private
            if gated is not None:
                repo.gated = "auto" if gated is True else gated

    def sha(self, repo_id: str, revision: str = "main", *, repo_type: str = "model") -> str:
        """The commit a branch, tag or sha stands for now."""
        with self._lock:
            commit = self._repo(repo_id, repo_type).resolve(revision)
            if commit is None:
                raise KeyError(f"{repo_id} has no revision {revision!r}")
            return commit.sha

    def file(
        self, repo_id: str, path: str, *, repo_type: str = "model", revision: str = "main"
    ) -> HubFile:
        """The file as served (size, oid, sha256, content) at ``revision``."""
        with self._lock:
            commit = self._repo(repo_id, repo_type).commits[
                self.sha(repo_id, revision, repo_type=repo_type)
            ]
            return commit.files[path]

    def files(
        self, repo_id: str, *, repo_type: str = "model", revision: str = "main"
    ) -> dict[str, HubFile]:
        with self._lock:
            sha = self.sha(repo_id, revision, repo_type=repo_type)
            return dict(self._repo(repo_id, repo_type).commits[sha].files)

    def resolve_url(
        self, repo_id: str, path: str, *, repo_type: str = "model", revision: str = "main"
    ) -> str:
        prefix = _RESOLVE_PREFIX[repo_type]
        return f"{self.endpoint}/{prefix}{repo_id}/resolve/{quote(revision, safe='')}/{quote(path)}"

    def _repo(self, repo_id: str, repo_type: str) -> _Repo:
        try:
            return self._repos[(repo_type, repo_id)]
        except KeyError:
            raise KeyError(f"no {repo_type} repo {repo_id}") from None

    def _now(self) -> datetime:
        self._clock += 1
        return _EPOCH + timedelta(seconds=self._clock)

    def _new_commit(
        self, repo: _Repo, parent: str | None, files: dict[str, HubFile], title: str
    ) -> _Commit:
        files = dict(sorted(files.items()))
        trees = _trees(files)
        date = self._now()
        stamp = f"{int(date.timestamp())} +0000"
        body = f"tree {trees['']}\n"
        if parent is not None:
            body += f"parent {parent}\n"
        body += (
            f"author Test <test@example.com> {stamp}\ncommitter Test <test@example.com> {stamp}\n"
        )
        body += f"\n{title}\n\n{repo.repo_type}/{repo.repo_id}\n"
        raw = body.encode()
        sha = hashlib.sha1(b"commit %d\0" % len(raw) + raw).hexdigest()
        commit = _Commit(sha, parent, files, trees, date, title)
        repo.commits[sha] = commit
        return commit

    # ---------------------------------------------------------------- observability

    def bytes_served(self, repo_id: str, path: str, *, repo_type: str = "model") -> int:
        """Body bytes written for that file so far, all requests and revisions (CDN included)."""
        with self._lock:
            return self._served.get((repo_type, repo_id, path), 0)

    def total_bytes_served(self) -> int:
        with self._lock:
            return sum(self._served.values())

    def clear_counters(self) -> None:
        """Forget ``requests``, ``authorizations`` and ``bytes_served``."""
        with self._lock:
            self.requests.clear()
            self.authorizations.clear()
            self._served.clear()

    def _count(self, key: tuple[str, str, str], amount: int) -> None:
        with self._lock:
            self._served[key] = self._served.get(key, 0) + amount

    # ---------------------------------------------------------------- faults

    def fault_status(
        self,
        code: int,
        retry_after: int | float | str | None = None,
        times: int = 1,
        path: str | None = None,
        *,
        api: bool = False,
    ) -> None:
        """The next ``times`` matching requests are answered ``code`` (with ``Retry-After`` if
        given) and a JSON error body. Matches resolve and CDN requests (HEAD and GET) for
        ``path`` (a path inside the repo) or any path; with ``api=True`` and no ``path``, API
        requests match too."""
        self._add(_Fault("status", times, path, api=api, status=code, retry_after=retry_after))

    def fault_cut(self, after_bytes: int, times: int = 1, path: str | None = None) -> None:
        """The next ``times`` matching GETs send full headers (the real Content-Length) and
        only ``after_bytes`` of the body, then close the connection."""
        self._add(_Fault("cut", times, path, after_bytes=after_bytes))

    def fault_ignore_range(self, times: int = 1, path: str | None = None) -> None:
        """The next ``times`` matching GETs that carry a Range get 200 and the whole file."""
        self._add(_Fault("ignore_range", times, path))

    def fault_corrupt(self, path: str | None = None, times: int = 1) -> None:
        """The next ``times`` matching GETs get a body with its first and last byte flipped
        (xor 0xFF); status, headers and length are unchanged."""
        self._add(_Fault("corrupt", times, path))

    def fault_stall(self, path: str | None = None) -> None:
        """From now until ``release``, matching resolve/CDN requests are read and then left
        unanswered (the connection stays open). ``wait_stalled`` tells when one is held."""
        with self._lock:
            self._release.clear()
            self._stall_armed, self._stall_path = True, path

    def release(self) -> None:
        """End a stall: the held requests are answered normally, new ones are not held."""
        with self._lock:
            self._stall_armed = False
            self._release.set()
            self._lock.notify_all()

    @property
    def stalled(self) -> int:
        """How many requests are being held by a stall right now."""
        with self._lock:
            return self._stalled

    def wait_stalled(self, count: int = 1, timeout: float = 10.0) -> bool:
        """Wait until at least ``count`` requests are held; False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: self._stalled >= count, timeout)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
        self.release()

    def _add(self, fault: _Fault) -> None:
        if fault.remaining < 1:
            raise ValueError("times must be at least 1")
        with self._lock:
            self._faults.append(fault)

    def _take(
        self, kinds: Collection[str], path: str | None, *, api: bool = False
    ) -> _Fault | None:
        """Consume one matching fault of one of ``kinds``, if any is armed."""
        with self._lock:
            for fault in self._faults:
                if fault.kind not in kinds:
                    continue
                if api:
                    if not fault.api or fault.path is not None:
                        continue
                elif fault.path is not None and fault.path != path:
                    continue
                fault.remaining -= 1
                if fault.remaining == 0:
                    self._faults.remove(fault)
                return fault
            return None

    def _hold_if_stalled(self, path: str | None) -> None:
        with self._lock:
            if not self._stall_armed or self._stall_path not in (None, path):
                return
            self._stalled += 1
            self._lock.notify_all()
        try:
            self._release.wait()
        finally:
            with self._lock:
                self._stalled -= 1

    # ---------------------------------------------------------------- lifecycle

    def stop(self) -> None:
        """Stop both ports, end every connection (held ones too) and join every thread.
        Held requests are released first; whatever a handler still writes then fails."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
        self.release()
        for server in (self._http, self._cdn):
            server.shutdown()
        for server in (self._http, self._cdn):
            server.drop_connections()
        for server in (self._http, self._cdn):
            server.server_close()
        for thread in self._threads:
            thread.join()

    def __enter__(self) -> HubServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- request handling

    def _parse(self, raw_path: str) -> _Target | None:
        segments = raw_path.split("/")[1:]
        if len(segments) >= 3 and segments[0] == "api" and segments[1] in _TYPES:
            repo_type = _TYPES[segments[1]]
            repo_id, rest = self._split_repo_id(repo_type, segments[2:])
            if not rest:
                return _Target(repo_type, repo_id, "info")
            if rest[0] == "revision" and len(rest) >= 2:
                return _Target(repo_type, repo_id, "info", unquote("/".join(rest[1:])))
            if rest[0] == "tree" and len(rest) >= 2:
                path = unquote("/".join(rest[2:])).strip("/")
                return _Target(repo_type, repo_id, "tree", unquote(rest[1]), path)
            if rest == ["refs"]:
                return _Target(repo_type, repo_id, "refs")
            if rest[0] == "paths-info" and len(rest) >= 2:
                return _Target(repo_type, repo_id, "paths-info", unquote("/".join(rest[1:])))
            return None
        repo_type = "model"
        if segments and segments[0] in ("datasets", "spaces"):
            repo_type = _TYPES[segments[0]]
            segments = segments[1:]
        for length in (1, 2):
            if len(segments) >= length + 3 and segments[length] == "resolve":
                repo_id = unquote("/".join(segments[:length]))
                revision = unquote(segments[length + 1])
                path = unquote("/".join(segments[length + 2 :]))
                return _Target(repo_type, repo_id, "resolve", revision, path)
        return None

    def _split_repo_id(self, repo_type: str, rest: list[str]) -> tuple[str, list[str]]:
        one = unquote(rest[0])
        if len(rest) >= 2:
            two = f"{one}/{unquote(rest[1])}"
            with self._lock:
                if (repo_type, two) in self._repos:
                    return two, rest[2:]
                if (repo_type, one) in self._repos:
                    return one, rest[1:]
            if rest[1] not in _API_SUBPATHS:
                return two, rest[2:]
        return one, rest[1:]

    def _access(
        self, repo: _Repo | None, authorization: str | None, *, content: bool
    ) -> tuple[int, str | None, str] | None:
        """(status, X-Error-Code, message) refusing the request, or None to serve it."""
        valid = False
        if authorization is not None:
            scheme, _, given = authorization.partition(" ")
            valid = (
                scheme.lower() == "bearer"
                and self.token is not None
                and hmac.compare_digest(given.strip().encode(), self.token.encode())
            )
            if not valid:
                return 401, None, INVALID_CREDENTIALS
        if repo is None or (repo.private and not valid):
            if valid:
                return 404, "RepoNotFound", "Repository not found"
            return 401, "RepoNotFound", "Invalid username or password."
        if content and repo.gated and not (valid and repo.granted):
            kind = repo.repo_type
            if not valid:
                return (
                    401,
                    "GatedRepo",
                    f"Access to {kind} {repo.repo_id} is restricted. You must have access to it"
                    " and be authenticated to access it. Please log in.",
                )
            return (
                403,
                "GatedRepo",
                f"Access to {kind} {repo.repo_id} is restricted and you are not in the"
                " authorized list.",
            )
        return None

    def _entry(self, commit: _Commit, path: str, expand: bool, repo: _Repo) -> dict[str, Any]:
        if path in commit.files:
            hub_file = commit.files[path]
            entry: dict[str, Any] = {
                "type": "file",
                "oid": hub_file.oid,
                "size": hub_file.size,
                "path": path,
            }
            if hub_file.lfs:
                entry["lfs"] = {
                    "oid": hub_file.sha256,
                    "size": hub_file.size,
                    "pointerSize": hub_file.pointer_size,
                }
            if expand:
                entry["securityFileStatus"] = {
                    "status": "safe",
                    "avScan": {"virusFound": False, "virusNames": None},
                    "pickleImportScan": None,
                }
        else:
            entry = {"type": "directory", "oid": commit.trees[path], "size": 0, "path": path}
        if expand:
            last = self._last_commit(repo, commit, path)
            entry["lastCommit"] = {
                "id": last.sha,
                "title": last.title,
                "date": _iso(last.date),
            }
        return entry

    def _last_commit(self, repo: _Repo, commit: _Commit, path: str) -> _Commit:
        def oid(c: _Commit) -> str | None:
            if path in c.files:
                return c.files[path].oid
            return c.trees.get(path)

        mine = oid(commit)
        while commit.parent is not None:
            parent = repo.commits[commit.parent]
            if oid(parent) != mine:
                return commit
            commit = parent
        return commit

    def _listing(self, commit: _Commit, directory: str, recursive: bool) -> list[str]:
        """Paths under ``directory``: at each level directories first, then files, each by
        name; in a recursive listing a directory's contents follow it."""
        prefix = f"{directory}/" if directory else ""
        dirs = sorted(
            d for d in commit.trees if d.startswith(prefix) and d and "/" not in d[len(prefix) :]
        )
        files = sorted(
            f for f in commit.files if f.startswith(prefix) and "/" not in f[len(prefix) :]
        )
        out: list[str] = []
        for d in dirs:
            out.append(d)
            if recursive:
                out.extend(self._listing(commit, d, True))
        return out + files


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes")


def _parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """``(start, end_exclusive)``, ``"unsatisfiable"``, or None to ignore the header (absent,
    malformed or several ranges: served as a plain 200, as S3 does for multiple ranges)."""
    if header is None:
        return None
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:
        suffix = int(last)
        if suffix == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - suffix), size
    start = int(first)
    end = size - 1 if not last else min(int(last), size - 1)
    if last and int(last) < start:
        return None
    if start >= size:
        return "unsatisfiable"
    return start, end + 1


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # socketserver joins only non-daemon handler threads...
    block_on_close = True  # ...in server_close

    def __init__(self, hub: HubServer, *, cdn: bool) -> None:
        self.hub = hub
        self.cdn = cdn
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def close_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().close_request(request)

    def drop_connections(self) -> None:
        with self.connections_lock:
            connections = list(self.connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError | TimeoutError):
            return  # the client went away: expected with cuts, stalls and stop()
        if isinstance(error, OSError) and self.hub._stopping:
            return
        self.hub.errors.append(traceback.format_exc())


Headers = dict[str, str | int]
Answer = tuple[int, Any, Headers]
"""(status, JSON payload, headers) of an API answer, computed under the hub's lock and written
after it is released"""


def _refusal(status: int, code: str | None, message: str, headers: Headers | None = None) -> Answer:
    """An error as the Hub gives it: X-Error-Code, X-Error-Message and {"error": ...}."""
    extra: Headers = {"X-Error-Message": message, **(headers or {})}
    if code is not None:
        extra["X-Error-Code"] = code
    return status, {"error": message}, extra


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go in separate writes
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    @property
    def hub(self) -> HubServer:
        return self.server.hub

    def _dispatch(self) -> None:
        hub = self.hub
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        authorization = self.headers.get("Authorization")
        with hub._lock:
            hub.requests.append((self.command, self.path, self.headers.get("Range")))
            hub.authorizations.append((self.path, authorization))
        raw_path, _, query_string = self.path.partition("?")
        query = {k: v[-1] for k, v in parse_qs(query_string, keep_blank_values=True).items()}
        if self.server.cdn:
            self._cdn(raw_path, query)
            return
        target = hub._parse(raw_path)
        if target is not None and target.action == "resolve" and self.command != "POST":
            self._resolve(target, authorization)
            return
        if self.command == "HEAD":
            self._send(*_refusal(405, None, "Method not allowed"))
            return
        fault = hub._take(("status",), None, api=True)
        if fault is not None:
            self._send(*self._fault_answer(fault))
            return
        if raw_path == "/api/agent-harnesses" and self.command == "GET":
            self._send(200, {"standardEnvVars": [], "harnesses": {}}, {})
            return
        if target is None or target.action == "resolve":
            self._send(*_refusal(404, None, "Sorry, we can't find the page you are looking for."))
            return
        with hub._lock:
            answer = self._api(target, query, body, authorization)
        self._send(*answer)

    def _api(
        self, target: _Target, query: dict[str, str], body: bytes, authorization: str | None
    ) -> Answer:
        hub = self.hub
        repo = hub._repos.get((target.repo_type, target.repo_id))
        refusal = hub._access(repo, authorization, content=False)
        if refusal is not None:
            return _refusal(*refusal)
        assert repo is not None
        expected = "POST" if target.action == "paths-info" else "GET"
        if self.command != expected:
            return _refusal(405, None, "Method not allowed")
        if target.action == "refs":
            return self._refs(repo, query)
        commit = repo.resolve(target.revision)
        if commit is None:
            return _refusal(404, "RevisionNotFound", f"Invalid rev id: {target.revision}")
        if target.action == "info":
            return self._info(repo, commit, _truthy(query.get("blobs")))
        if target.action == "tree":
            return self._tree(repo, commit, target, query)
        return self._paths_info(repo, commit, body)

    def _send(self, status: int, payload: Any, headers: Headers) -> None:
        data = json.dumps(payload).encode()
        head: Headers = {
            "Content-Type": "application/json; charset=utf-8",
            "Content-Length": len(data),
        }
        self._send_head(status, head | headers)
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send_head(self, status: int, headers: Headers) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, str(value))
        self.end_headers()

    @staticmethod
    def _fault_answer(fault: _Fault) -> Answer:
        headers: Headers = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = str(fault.retry_after)
        return _refusal(fault.status, None, f"injected {fault.status}", headers)

    # ------------------------------------------------------------ API answers

    def _info(self, repo: _Repo, commit: _Commit, blobs: bool) -> Answer:
        siblings = []
        for path, hub_file in commit.files.items():
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling["size"] = hub_file.size
                sibling["blobId"] = hub_file.oid
                if hub_file.lfs:
                    sibling["lfs"] = {
                        "sha256": hub_file.sha256,
                        "size": hub_file.size,
                        "pointerSize": hub_file.pointer_size,
                    }
            siblings.append(sibling)
        info: dict[str, Any] = {
            "_id": hashlib.sha1(f"{repo.repo_type}/{repo.repo_id}".encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0] if "/" in repo.repo_id else None,
            "sha": commit.sha,
            "lastModified": _iso(commit.date),
            "createdAt": _iso(repo.created),
            "private": repo.private,
            "gated": repo.gated,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(f.size for f in commit.files.values()),
        }
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
        return 200, info, {}

    def _tree(self, repo: _Repo, commit: _Commit, target: _Target, query: dict[str, str]) -> Answer:
        hub = self.hub
        if target.path and target.path not in commit.trees:
            message = f"{target.path} does not exist on {target.revision}"
            return _refusal(404, "EntryNotFound", message, {"X-Repo-Commit": commit.sha})
        expand = _truthy(query.get("expand"))
        paths = hub._listing(commit, target.path, _truthy(query.get("recursive")))
        try:
            start = int(query.get("cursor") or 0)
        except ValueError:
            return _refusal(400, None, "Invalid cursor")
        page_size = max(1, hub.page_size)
        headers: Headers = {}
        if start + page_size < len(paths):
            next_query = {k: v for k, v in query.items() if k != "cursor"}
            next_query["cursor"] = str(start + page_size)
            url = f"{hub.endpoint}{self.path.partition('?')[0]}?{urlencode(next_query)}"
            headers["Link"] = f'<{url}>; rel="next"'
        page = paths[start : start + page_size]
        return 200, [hub._entry(commit, p, expand, repo) for p in page], headers

    def _paths_info(self, repo: _Repo, commit: _Commit, body: bytes) -> Answer:
        if self.headers.get("Content-Type", "").startswith("application/json"):
            form = json.loads(body or b"{}")
            paths, expand = form.get("paths", []), bool(form.get("expand"))
        else:
            fields = parse_qs(body.decode(), keep_blank_values=True)
            paths = fields.get("paths", [])
            expand = _truthy((fields.get("expand") or ["false"])[-1])
        entries = []
        for path in paths:
            path = path.strip("/")
            if path in commit.files or (path and path in commit.trees):
                entries.append(self.hub._entry(commit, path, expand, repo))
        return 200, entries, {}

    @staticmethod
    def _refs(repo: _Repo, query: dict[str, str]) -> Answer:
        def refs(kind: str, table: dict[str, str]) -> list[dict[str, str]]:
            return [
                {"name": name, "ref": f"refs/{kind}/{name}", "targetCommit": sha}
                for name, sha in sorted(table.items())
            ]

        payload: dict[str, Any] = {
            "branches": refs("heads", repo.branches),
            "tags": refs("tags", repo.tags),
            "converts": [],
        }
        if _truthy(query.get("include_prs")):
            payload["pullRequests"] = []
        return 200, payload, {}

    # ------------------------------------------------------------ file content

    def _resolve(self, target: _Target, authorization: str | None) -> None:
        hub = self.hub
        hub._hold_if_stalled(target.path)
        fault = hub._take(("status",), target.path)
        if fault is not None:
            self._send(*self._fault_answer(fault))
            return
        with hub._lock:
            repo = hub._repos.get((target.repo_type, target.repo_id))
            refusal = hub._access(repo, authorization, content=True)
            commit = repo.resolve(target.revision) if repo is not None else None
            hub_file = commit.files.get(target.path) if commit is not None else None
            redirect = hub.lfs_redirect
        if refusal is not None:
            self._send(*_refusal(*refusal))
            return
        if commit is None:
            self._send(*_refusal(404, "RevisionNotFound", f"Invalid rev id: {target.revision}"))
            return
        if hub_file is None:
            headers: Headers = {"X-Repo-Commit": commit.sha}
            self._send(*_refusal(404, "EntryNotFound", "Entry not found", headers))
            return
        headers = {
            "X-Repo-Commit": commit.sha,
            "ETag": f'"{hub_file.etag}"',
            "Accept-Ranges": "bytes",
        }
        if hub_file.lfs:
            headers["X-Linked-Etag"] = f'"{hub_file.sha256}"'
            headers["X-Linked-Size"] = hub_file.size
            if redirect:
                signed = {
                    "repo_type": target.repo_type,
                    "repo_id": target.repo_id,
                    "path": hub_file.path,
                    "commit": commit.sha,
                    "Expires": "4102444800",
                    "Signature": hub_file.oid,
                }
                headers["Location"] = (
                    f"{hub.cdn_endpoint}/lfs/{hub_file.sha256}?{urlencode(signed)}"
                )
                headers["Content-Length"] = 0
                self._send_head(302, headers)
                return
        self._serve_file(hub_file, (target.repo_type, target.repo_id, hub_file.path), headers)

    def _cdn(self, raw_path: str, query: dict[str, str]) -> None:
        """The CDN: content by sha256 behind a "signed" URL, no Hub headers, no auth."""
        hub = self.hub
        key = (query.get("repo_type", ""), query.get("repo_id", ""), query.get("path", ""))
        hub._hold_if_stalled(key[2])
        fault = hub._take(("status",), key[2])
        if fault is not None:
            self._send(*self._fault_answer(fault))
            return
        hub_file = None
        with hub._lock:
            repo = hub._repos.get((key[0], key[1]))
            commit = repo.commits.get(query.get("commit", "")) if repo is not None else None
            if commit is not None:
                hub_file = commit.files.get(key[2])
        if hub_file is None or raw_path != f"/lfs/{hub_file.sha256}" or self.command == "POST":
            self._send_head(403, {"Content-Type": "application/xml", "Content-Length": 0})
            return
        self._serve_file(hub_file, key, {"Accept-Ranges": "bytes"})

    def _serve_file(self, hub_file: HubFile, key: tuple[str, str, str], headers: Headers) -> None:
        hub = self.hub
        size = hub_file.size
        get = self.command == "GET"
        requested = _parse_range(self.headers.get("Range"), size)
        if get and requested is not None and hub._take(("ignore_range",), hub_file.path):
            requested = None
        if requested == "unsatisfiable":
            headers["Content-Range"] = f"bytes */{size}"
            self._send(*_refusal(416, None, "Requested Range Not Satisfiable", headers))
            return
        status, start, end = 200, 0, size
        if isinstance(requested, tuple):
            status, (start, end) = 206, requested
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        headers["Content-Length"] = end - start
        headers.setdefault("Content-Type", "application/octet-stream")
        cut = hub._take(("cut",), hub_file.path) if get else None
        corrupt = hub._take(("corrupt",), hub_file.path) if get else None
        self._send_head(status, headers)
        if not get:
            return
        stop = end if cut is None else min(end, start + cut.after_bytes)
        offset = start
        for chunk in hub_file.chunks(start, stop):
            if corrupt is not None:
                chunk = _flip(chunk, offset, (start, end - 1))
            # counted before the write, so a client holding the bytes always sees them counted
            hub._count(key, len(chunk))
            try:
                self.wfile.write(chunk)
            except OSError:
                hub._count(key, -len(chunk))
                raise
            offset += len(chunk)
        if stop < end:
            self.close_connection = True  # the body is short: drop the connection


def _flip(chunk: bytes | memoryview, offset: int, positions: tuple[int, ...]) -> bytes | memoryview:
    """``chunk`` (at ``offset`` in the file) with the bytes at ``positions`` xor 0xFF."""
    inside = [p - offset for p in set(positions) if offset <= p < offset + len(chunk)]
    if not inside:
        return chunk
    mutable = bytearray(chunk)
    for index in inside:
        mutable[index] ^= 0xFF
    return bytes(mutable)


@contextlib.contextmanager
def running_hub(
    *, token: str | None = None, page_size: int = 1000, lfs_redirect: bool = False
) -> Iterator[HubServer]:
    """A started ``HubServer``, stopped on exit, failing if a handler raised.

    While it runs, ``huggingface_hub`` is kept from fetching its agent-harness registry from
    huggingface.co (a best-effort request the first ``build_hf_headers`` of a process makes);
    on exit its shared HTTP client is closed so no connection to the stopped server lingers.
    """
    from huggingface_hub.utils import _detect_agent, _http

    saved = _detect_agent._registry
    _detect_agent._registry = {"standardEnvVars": [], "harnesses": {}}
    server = HubServer(token=token, page_size=page_size, lfs_redirect=lfs_redirect)
    try:
        yield server
    finally:
        _http.close_session()
        server.stop()
        _detect_agent._registry = saved
    if server.errors:
        raise AssertionError("hub stand-in handler errors:\n" + "\n".join(server.errors))
