"""The git repositories the benchmarks measure against, generated once and cached under
``bench-work/`` by their parameters: a benchmark's first run pays for generating them, the
others reuse them, and every benchmark that asks for the same parameters gets the same bytes.

A source-like repository (``ensure_repo``) is a long history of source-like files written
with ``git fast-import`` from a seeded generator; ``commit_one_file`` makes the one-file
repositories of the read benchmarks.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tests.helpers.gitrepos import serve_config

from .cli import BenchError, say
from .paths import WORK

GENERATOR_VERSION = 1
"""Bump when the generated repository changes for the same parameters (new cache key)."""
SEED = 5000

GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_TERMINAL_PROMPT": "0",
    "LC_ALL": "C",
}
"""Keep the user's git configuration out of both the server and the clients."""


def git_env() -> dict[str, str]:
    return {**os.environ, **GIT_ENV}


def git(*args: str, cwd: Path | None = None, input: str | None = None) -> str:
    """Run git and return its stdout; a failure becomes a BenchError."""
    try:
        result = subprocess.run(
            ["git", *args],
            cwd=cwd,
            input=input,
            capture_output=True,
            text=True,
            env=git_env(),
            check=False,
        )
    except FileNotFoundError:
        raise BenchError("git is not installed") from None
    if result.returncode != 0:
        detail = result.stderr.strip().splitlines()[-1:] or ["no message"]
        raise BenchError(f"git {' '.join(args[:2])} failed: {detail[0]}")
    return result.stdout


# -- the generated source-like repository --------------------------------------------------

_TOP_DIRS = ["src", "lib", "tests", "docs", "tools", "examples", "include", "scripts"]
_ROOT_FILES = ["README.md", "LICENSE", "Makefile", "pyproject.toml", "setup.cfg", "CHANGELOG.md"]
_EXTENSIONS = [".py"] * 6 + [".c", ".h", ".rs", ".go", ".js", ".ts", ".md", ".json", ".txt"]
_LINE_TEMPLATES = [
    "{i}def {a}_{b}({c}, {d}={n}):\n",
    "{i}    {a} = {b}.{c}({d}, {n})\n",
    "{i}    if {a} is not None and {b} > {n}:\n",
    "{i}        return {a}[{b}] + {c}\n",
    "{i}    for {a} in {b}.{c}():\n",
    "{i}    # {a} {b} {c} {d}: keep the {a} of {c} until {d} is done\n",
    "{i}class {A}{B}({C}):\n",
    '{i}    """{A} the {b} of a {c}, or {d} when there is none."""\n',
    "{i}    self.{a}_{b} = {c}_{d}({n}, {a}={b})\n",
    '{i}    raise {A}Error(f"{b} {{{c}!r}} is not a {d}")\n',
    "{i}import {a}.{b}\n",
    "{i}from {a} import {b}, {c}\n",
    "\n",
    "{i}    {a}.{b}({c}={d}, {n}: {n})\n",
]


@dataclass(frozen=True)
class RepoParams:
    """What the generated repository depends on; its cache key."""

    files: int
    commits: int

    @property
    def key(self) -> str:
        return f"repo-v{GENERATOR_VERSION}-seed{SEED}-f{self.files}-c{self.commits}"


@dataclass(frozen=True)
class RepoInfo:
    """A generated bare repository, ready to serve, and what a mount of it must show."""

    base: Path
    """The directory ``git daemon`` serves (``--base-path``); holds ``repo.git``."""
    name: str
    tip: str
    root_names: list[str]
    files: int
    directories: int
    content_bytes: int
    pack_bytes: int
    commits: int

    @property
    def path(self) -> Path:
        return self.base / self.name


class SourceText:
    """A deterministic pool of source-like lines to build file contents from."""

    def __init__(self, rng: random.Random, words: int = 3000, lines: int = 40000) -> None:
        letters = "abcdefghijklmnopqrstuvwxyz"
        self.words = sorted(
            {"".join(rng.choices(letters, k=rng.randint(3, 10))) for _ in range(words)}
        )
        self.lines = [self._line(rng) for _ in range(lines)]
        self.mean_line = sum(map(len, self.lines)) / len(self.lines)

    def _line(self, rng: random.Random) -> str:
        a, b, c, d = rng.sample(self.words, 4)
        return rng.choice(_LINE_TEMPLATES).format(
            i="    " * rng.randint(0, 2),
            a=a,
            b=b,
            c=c,
            d=d,
            A=a.capitalize(),
            B=b.capitalize(),
            C=c.capitalize(),
            n=rng.randint(0, 4096),
        )

    def content(self, rng: random.Random, size: int) -> list[str]:
        """About ``size`` bytes of lines."""
        return rng.choices(self.lines, k=max(1, round(size / self.mean_line)))

    def edit(self, rng: random.Random, lines: list[str]) -> None:
        """Change a few lines in place: replace some, insert or delete one now and then."""
        for _ in range(rng.randint(1, 4)):
            where = rng.randrange(len(lines))
            roll = rng.random()
            if roll < 0.6:
                lines[where] = rng.choice(self.lines)
            elif roll < 0.85 or len(lines) < 2:
                lines.insert(where, rng.choice(self.lines))
            else:
                del lines[where]


def file_size(rng: random.Random) -> int:
    """Source-like sizes: log-normal around 3.5 KB, from 200 bytes to 64 KB."""
    return int(min(65536, max(200, rng.lognormvariate(math.log(3500), 1.0))))


def plan_paths(rng: random.Random, words: Sequence[str], files: int) -> list[str]:
    """``files`` distinct paths over nested directories, in the order they are added."""
    directories = list(_TOP_DIRS)
    depth = dict.fromkeys(directories, 1)
    taken: set[str] = set(directories)
    for _ in range(max(0, files // 25 - len(directories))):
        parent = rng.choice([d for d in directories if depth[d] < 5])
        name = f"{parent}/{rng.choice(words)}"
        if name not in taken:
            taken.add(name)
            directories.append(name)
            depth[name] = depth[parent] + 1
    root_files = _ROOT_FILES[: min(len(_ROOT_FILES), files)]
    paths: list[str] = []
    while len(paths) + len(root_files) < files:
        path = f"{rng.choice(directories)}/{rng.choice(words)}_{rng.choice(words)}"
        path += rng.choice(_EXTENSIONS)
        if path not in taken:
            taken.add(path)
            paths.append(path)
    return root_files + paths


def write_history(stream: IO[bytes], params: RepoParams) -> None:
    """A ``git fast-import`` stream: ``params.commits`` commits on main adding ``params.files``
    files in order, each commit also editing one or two files added earlier."""
    rng = random.Random(SEED)
    text = SourceText(rng)
    paths = plan_paths(rng, text.words, params.files)
    contents: dict[str, list[str]] = {}
    existing: list[str] = []
    when = 1_600_000_000
    for number in range(params.commits):
        start = -(-number * params.files // params.commits)
        end = -(-(number + 1) * params.files // params.commits)
        added = paths[start:end]
        changed: list[str] = []
        for path in added:
            contents[path] = text.content(rng, file_size(rng))
        if existing:
            for _ in range(1 + (rng.random() < 0.5)):
                path = rng.choice(existing)
                text.edit(rng, contents[path])
                changed.append(path)
        existing.extend(added)
        when += rng.randint(60, 86400)
        message = f"Change {number + 1}: add {len(added)} files, edit {len(changed)}\n".encode()
        stream.write(
            b"commit refs/heads/main\n"
            b"author Bench <bench@example.com> %d +0000\n"
            b"committer Bench <bench@example.com> %d +0000\n"
            b"data %d\n%s" % (when, when, len(message), message)
        )
        for path in dict.fromkeys(added + changed):
            data = "".join(contents[path]).encode()
            stream.write(b"M 100644 inline %s\ndata %d\n%s\n" % (path.encode(), len(data), data))
        stream.write(b"\n")
    stream.write(b"done\n")


def generate_repo(params: RepoParams, target: Path) -> None:
    """Create the bare repository ``target/repo.git`` (via a temporary directory)."""
    temp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(temp, ignore_errors=True)
    bare = temp / "repo.git"
    git("init", "-q", "--bare", "-b", "main", str(bare))
    process = subprocess.Popen(
        ["git", "fast-import", "--quiet", "--done"],
        cwd=bare,
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=git_env(),
        bufsize=1 << 20,
    )
    assert process.stdin is not None and process.stderr is not None
    with contextlib.suppress(BrokenPipeError):  # fast-import died: its stderr says why
        write_history(process.stdin, params)
    with contextlib.suppress(BrokenPipeError):
        process.stdin.close()
    error = process.stderr.read().decode(errors="replace").strip()
    if process.wait() != 0:
        raise BenchError(f"git fast-import failed: {error.splitlines()[-1:] or 'no message'}")
    git("repack", "-a", "-d", "-q", cwd=bare)
    git("prune-packed", cwd=bare)
    shutil.rmtree(target, ignore_errors=True)
    temp.rename(target)


def describe_repo(base: Path, params: RepoParams) -> RepoInfo:
    """Read back what the repository holds at HEAD (cached in ``info.json``)."""
    info_file = base / "info.json"
    if info_file.exists():
        return RepoInfo(base=base, **json.loads(info_file.read_text()))
    bare = base / "repo.git"
    tip = git("rev-parse", "HEAD", cwd=bare).strip()
    listed = git("ls-tree", "-z", "--name-only", "HEAD", cwd=bare).split("\0")
    files = directories = content = 0
    for record in git("ls-tree", "-r", "-t", "-l", "-z", "HEAD", cwd=bare).split("\0"):
        if not record:
            continue
        kind, size = record.split()[1], record.split()[3]
        if kind == "tree":
            directories += 1
        else:
            files += 1
            content += int(size)
    counts = dict(line.split(": ") for line in git("count-objects", "-v", cwd=bare).splitlines())
    info: dict[str, Any] = {
        "name": "repo.git",
        "tip": tip,
        "root_names": sorted(n for n in listed if n),
        "files": files,
        "directories": directories,
        "content_bytes": content,
        "pack_bytes": int(counts["size-pack"]) * 1024,
        "commits": int(git("rev-list", "--count", "HEAD", cwd=bare)),
    }
    if info["commits"] != params.commits or files != params.files:
        raise BenchError(f"generated repository does not match its parameters: {info_file}")
    info_file.write_text(json.dumps(info, indent=1) + "\n")
    return RepoInfo(base=base, **info)


def ensure_repo(params: RepoParams) -> tuple[RepoInfo, float | None]:
    """The cached repository for ``params``, generated first if missing; also the seconds
    generation took (None when it came from the cache)."""
    base = WORK / params.key
    took = None
    if not (base / "info.json").exists():
        say(f"generating {params.files} files in {params.commits} commits into {base} ...")
        started = time.perf_counter()
        generate_repo(params, base)
        took = time.perf_counter() - started
    info = describe_repo(base, params)
    if took is not None:
        say(f"generated in {took:.1f} s (pack {info.pack_bytes / 2**20:.1f} MiB)")
    serve_config(info.path)
    return info, took


# -- one-file repositories -----------------------------------------------------------------


def commit_one_file(bare: Path, oid: str, name: str) -> str:
    """Commit the blob ``oid`` (already in ``bare``) as the one file ``name`` of main, and
    configure the repository for lazy clients; the commit's id."""
    tree = git("mktree", input=f"100644 blob {oid}\t{name}\n", cwd=bare).strip()
    commit = git(
        "-c", "user.name=Bench", "-c", "user.email=bench@example.com",
        "commit-tree", tree, "-m", "one big file", cwd=bare,
    ).strip()  # fmt: skip
    git("update-ref", "refs/heads/main", commit, cwd=bare)
    serve_config(bare)
    return commit
