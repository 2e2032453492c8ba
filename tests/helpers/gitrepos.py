"""Build real git repositories for the tests with the real git command."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
    "GIT_AUTHOR_DATE": "1700000000 +0000",
    "GIT_COMMITTER_DATE": "1700000000 +0000",
    "GIT_CONFIG_NOSYSTEM": "1",
    "HOME": "/nonexistent",
}


def git(*args: str, cwd: Path | None = None, input: bytes | None = None) -> bytes:
    env = {**os.environ, **GIT_ENV}
    result = subprocess.run(
        ["git", *args], cwd=cwd, input=input, capture_output=True, env=env, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {result.stderr.decode()}")
    return result.stdout


@dataclass(frozen=True)
class Symlink:
    target: bytes


@dataclass(frozen=True)
class Executable:
    content: bytes


@dataclass(frozen=True)
class Submodule:
    commit: str


Content = bytes | Symlink | Executable | Submodule


@dataclass(frozen=True)
class Repo:
    path: Path
    """The bare repository (what the servers serve)."""
    commit: str

    def rev_parse(self, spec: str) -> str:
        return git("rev-parse", spec, cwd=self.path).decode().strip()

    def blob_id(self, path: str, commit: str | None = None) -> str:
        return self.rev_parse(f"{commit or self.commit}:{path}")

    def archive(self, commit: str | None = None) -> tarfile.TarFile:
        data = git("archive", "--format=tar", commit or self.commit, cwd=self.path)
        return tarfile.open(fileobj=io.BytesIO(data))


def serve_config(bare: Path) -> None:
    """What a server needs for lazy clients (git 2.39 advertises object-info regardless)."""
    git("config", "uploadpack.allowFilter", "true", cwd=bare)
    git("config", "uploadpack.allowAnySHA1InWant", "true", cwd=bare)
    git("config", "transfer.advertiseObjectInfo", "true", cwd=bare)


def make_repo(
    base: Path, name: str, files: dict[str, Content], object_format: str = "sha1"
) -> Repo:
    """A bare repository ``base/name`` whose one commit holds ``files``."""
    work = base / f".work-{name}"
    git("init", "-q", "-b", "main", f"--object-format={object_format}", str(work))
    write_tree(work, files)
    git("add", "-A", cwd=work)
    for path, content in files.items():
        if isinstance(content, Submodule):
            git("update-index", "--add", "--cacheinfo", f"160000,{content.commit},{path}", cwd=work)
    git("commit", "-q", "--allow-empty", "-m", "initial", cwd=work)
    bare = base / name
    git("clone", "-q", "--bare", "--no-local", str(work), str(bare))
    serve_config(bare)
    return Repo(bare, git("rev-parse", "HEAD", cwd=bare).decode().strip())


def write_tree(work: Path, files: dict[str, Content]) -> None:
    for path, content in files.items():
        target = work / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Symlink):
            if target.is_symlink() or target.exists():
                target.unlink()
            os.symlink(content.target, target)
        elif isinstance(content, Executable):
            target.write_bytes(content.content)
            target.chmod(0o755)
        elif isinstance(content, bytes):
            target.write_bytes(content)


def commit_files(
    repo: Repo, files: dict[str, Content], message: str = "change", remove: tuple[str, ...] = ()
) -> Repo:
    """Add a commit on main that writes ``files`` and deletes ``remove`` (in a clone)."""
    work = repo.path.parent / f".work-update-{hashlib.sha1(message.encode()).hexdigest()[:8]}"
    git("clone", "-q", str(repo.path), str(work))
    write_tree(work, files)
    for path in remove:
        git("rm", "-q", path, cwd=work)
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", message, cwd=work)
    git("push", "-q", "origin", "HEAD:main", cwd=work)
    return Repo(repo.path, repo.rev_parse("main"))


def blob_id_of(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def raw_tree(entries: list[tuple[str, bytes, str]]) -> bytes:
    """Serialise a tree exactly as given (mode, name, hex id), bypassing git's own checks."""
    return b"".join(
        mode.encode() + b" " + name + b"\0" + bytes.fromhex(oid) for mode, name, oid in entries
    )


def write_object(repo: Path, kind: str, data: bytes) -> str:
    """Store an object as is (``--literally``), even one git itself would refuse to build."""
    out = git("hash-object", "-t", kind, "--literally", "-w", "--stdin", cwd=repo, input=data)
    return out.decode().strip()


def commit_tree(repo: Path, tree: str, branch: str = "main") -> str:
    commit = git("commit-tree", tree, "-m", "crafted", cwd=repo).decode().strip()
    git("update-ref", f"refs/heads/{branch}", commit, cwd=repo)
    return commit
