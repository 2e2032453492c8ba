"""The Dockerfile and .dockerignore, checked without docker and without a network.

A small Dockerfile parser (comments, line continuations, exec form against shell form, stages
by FROM) feeds ``problems()``, which says everything wrong with a Dockerfile for running the
artifactfs daemon in a container. The real files must have no problem, and each rule is shown
to fire on a copy of the real Dockerfile broken in one place, so that no check passes vacuously.
The health check's command is also run for real, with and without a daemon answering.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.helpers.daemons import running_daemon

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

HOME_DIR = "/var/lib/artifactfs"
ENTRYPOINT = ["artifactfs", "daemon"]
FINAL_PACKAGES = {"fuse3", "git", "ca-certificates"}
PINS = "container/requirements.txt"
BUILD_PINS = "container/build-constraints.txt"
SLIM_PYTHON = re.compile(r"^python:3\.(\d+)(?:\.\d+)?-slim-(bookworm|trixie)$")
DURATION = re.compile(r"^(?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h))+$")


# -- a Dockerfile parser ---------------------------------------------------------------------


class ParseError(ValueError):
    pass


@dataclass
class Instruction:
    keyword: str
    """Upper case: FROM, RUN, COPY, ..."""
    args: str
    """Everything after the keyword, continuation lines joined."""
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON array, or None for the shell form. Like Docker, text that starts with ``[``
        but is not a JSON array of strings (single quotes, say) is the shell form."""
        if not self.args.startswith("["):
            return None
        try:
            value = json.loads(self.args)
        except json.JSONDecodeError:
            return None
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return value
        return None

    def flags_and_rest(self) -> tuple[dict[str, str], str]:
        """Leading ``--name=value`` (or bare ``--name``) flags, and the text after them."""
        flags: dict[str, str] = {}
        rest = self.args
        while match := re.match(r"--([A-Za-z-]+)(?:=(\S*))?\s*", rest):
            flags[match.group(1)] = match.group(2) if match.group(2) is not None else ""
            rest = rest[match.end() :]
        return flags, rest


@dataclass
class Stage:
    base: str
    name: str | None
    line: int
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            values.update(parse_env(instruction.args, values))
        return values


def logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, text) per instruction: comment lines dropped (also inside a
    continuation, as Docker does), a trailing backslash joins the next line."""
    result: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if not pending:
            start = number
        continued = re.search(r"\\[ \t]*$", raw)
        pending.append(raw[: continued.start()] if continued else raw)
        if not continued:
            result.append((start, "".join(pending).strip()))
            pending = []
    if pending:
        raise ParseError(f"line {start}: the file ends inside a continuation")
    return result


def parse_dockerfile(text: str) -> list[Stage]:
    if re.match(r"\s*#\s*escape\s*=", text, re.IGNORECASE):
        raise ParseError("an escape directive: this parser knows only the backslash")
    stages: list[Stage] = []
    for number, line in logical_lines(text):
        keyword, _, args = line.partition(" ")
        instruction = Instruction(keyword.upper(), args.strip(), number)
        if instruction.keyword == "FROM":
            words = [w for w in instruction.args.split() if not w.startswith("--")]
            if len(words) == 3 and words[1].upper() == "AS":
                stages.append(Stage(words[0], words[2], number))
            elif len(words) == 1:
                stages.append(Stage(words[0], None, number))
            else:
                raise ParseError(f"line {number}: cannot read FROM {instruction.args!r}")
        elif not stages:
            if instruction.keyword != "ARG":
                raise ParseError(f"line {number}: {instruction.keyword} before any FROM")
        else:
            stages[-1].instructions.append(instruction)
    if not stages:
        raise ParseError("no FROM")
    return stages


def expand(text: str, env: dict[str, str]) -> str:
    return re.sub(r"\$(?:\{(\w+)\}|(\w+))", lambda m: env.get(m.group(1) or m.group(2), ""), text)


def parse_env(args: str, env: dict[str, str]) -> dict[str, str]:
    """``ENV k=v k2="v 2"`` or the old ``ENV k some value``."""
    first = args.split(None, 1)
    if first and "=" not in first[0]:
        return {first[0]: first[1] if len(first) > 1 else ""}
    values: dict[str, str] = {}
    for word in shlex.split(args):
        key, sep, value = word.partition("=")
        if not sep:
            raise ParseError(f"ENV {args!r}: {word!r} is not key=value")
        values[key] = expand(value, {**env, **values})
    return values


def shell_commands(instruction: Instruction) -> list[list[str]]:
    """The simple commands of a RUN (or CMD) as word lists, split at ``&&``, ``||``, ``;`` and
    ``|``; leading ``VAR=value`` assignments dropped. Exec form ``["sh", "-c", S]`` reads S."""
    argv = instruction.exec_form()
    if argv is not None:
        if len(argv) >= 3 and os.path.basename(argv[0]) in ("sh", "bash") and argv[1] == "-c":
            script = argv[2]
        else:
            return [argv]
    else:
        script = instruction.args
    lexer = shlex.shlex(script, posix=True, punctuation_chars="&|;")
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in ("&&", "||", ";", "|", "&"):
            commands.append([])
        elif commands[-1] or not re.match(r"^\w+=", token):
            commands[-1].append(token)
    return [c for c in commands if c]


@dataclass
class AptInstall:
    instruction: Instruction
    packages: list[str]
    options: list[str]
    updated_before: bool
    lists_removed_after: bool


def apt_installs(stage: Stage) -> list[AptInstall]:
    found = []
    for instruction in stage.all("RUN"):
        commands = shell_commands(instruction)
        for index, words in enumerate(commands):
            if words[0] not in ("apt-get", "apt") or "install" not in words:
                continue
            after = words[words.index("install") + 1 :]
            packages = [w for w in after if not w.startswith("-")]
            options = [w for w in words[1:] if w.startswith("-")]
            updated = any(c[0] in ("apt-get", "apt") and "update" in c for c in commands[:index])
            removed = any(
                c[0] == "rm" and "/var/lib/apt/lists/*" in c for c in commands[index + 1 :]
            )
            found.append(AptInstall(instruction, packages, options, updated, removed))
    return found


# -- .dockerignore, as Docker reads it -------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
            continue
        if pattern.startswith("**", i):
            out, i = out + ".*", i + 2
            continue
        if char == "*":
            out += "[^/]*"
        elif char == "?":
            out += "[^/]"
        elif char == "[":
            end = pattern.index("]", i + 1)
            body = pattern[i + 1 : end]
            out += "[" + ("^" + body[1:] if body[:1] in ("!", "^") else body) + "]"
            i = end
        elif char == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(char)
        i += 1
    return re.compile(out + r"\Z")


def parse_dockerignore(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """(is an exception ``!``, regex) per pattern, in order (the last match wins)."""
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = os.path.normpath(line[1:].strip() if negated else line).lstrip("/")
        rules.append((negated, _pattern_regex(pattern)))
    return rules


def is_excluded(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether a context path (relative, with ``/``) stays out of the build context: a pattern
    matches a path or any directory above it, and the last matching pattern decides."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negated, regex in rules:
        if any(regex.match(candidate) for candidate in candidates):
            excluded = not negated
    return excluded


# -- the rules -------------------------------------------------------------------------------


def problems(dockerfile: str, dockerignore: str, root: Path = ROOT) -> list[str]:
    """Everything wrong with this Dockerfile (and .dockerignore) for the artifactfs daemon."""
    found: list[str] = []
    stages = parse_dockerfile(dockerfile)
    rules = parse_dockerignore(dockerignore)
    final = stages[-1]
    names = {s.name: s for s in stages[:-1] if s.name}

    match = SLIM_PYTHON.match(final.base)
    if match is None:
        found.append(f"final base {final.base} is not a slim Debian python image")
    elif int(match.group(1)) < 11:
        found.append(f"final base {final.base} is older than Python 3.11")
    for stage in stages[:-1]:
        if stage.base != final.base:
            found.append(f"stage {stage.name} is built on {stage.base}, not {final.base}")

    installs = apt_installs(final)
    packages = {p for install in installs for p in install.packages}
    if "fuse3" not in packages:
        found.append("fuse3 is not apt-installed in the final stage")
    if packages != FINAL_PACKAGES:
        found.append(f"final stage apt packages {sorted(packages)} != {sorted(FINAL_PACKAGES)}")
    for install in installs:
        at = f"line {install.instruction.line}"
        if "--no-install-recommends" not in install.options:
            found.append(f"{at}: apt-get install without --no-install-recommends")
        if not install.updated_before:
            found.append(f"{at}: apt-get install without apt-get update in the same RUN")
        if not install.lists_removed_after:
            found.append(f"{at}: the apt lists are not removed in the same RUN")

    entrypoint = final.last("ENTRYPOINT")
    if entrypoint is None:
        found.append("no ENTRYPOINT in the final stage")
    elif entrypoint.exec_form() != ENTRYPOINT:
        found.append(f"ENTRYPOINT {entrypoint.args} is not exec form {json.dumps(ENTRYPOINT)}")
    if final.all("CMD"):
        found.append("a CMD in the final stage would be passed to the daemon as arguments")

    found += _healthcheck_problems(final.last("HEALTHCHECK"))

    env = final.env()
    home = env.get("ARTIFACTFS_HOME")
    if home != HOME_DIR:
        found.append(f"ENV ARTIFACTFS_HOME is {home!r}, not {HOME_DIR}")
    volumes: list[str] = []
    for instruction in final.all("VOLUME"):
        listed = instruction.exec_form() or instruction.args.split()
        volumes += [expand(v, env).rstrip("/") for v in listed]
    if volumes != [home]:
        found.append(f"VOLUME {volumes} is not the ARTIFACTFS_HOME {home!r}")

    found += _copy_problems(stages, names, rules, root)
    found += _path_problems(final, names)
    found += _release_problems(stages, final, root)

    for needed in (".venv", ".venv/bin/python", ".git", ".git/HEAD"):
        if not is_excluded(needed, rules):
            found.append(f".dockerignore does not exclude {needed}")
    for cache in ("tests/test_1_gate.py", "artifactfs/__pycache__/errors.cpython-311.pyc"):
        if not is_excluded(cache, rules):
            found.append(f".dockerignore does not exclude {cache}")
    return found


def _healthcheck_problems(check: Instruction | None) -> list[str]:
    if check is None:
        return ["no HEALTHCHECK in the final stage"]
    flags, rest = check.flags_and_rest()
    keyword, _, command = rest.partition(" ")
    if keyword.upper() != "CMD":
        return [f"HEALTHCHECK {check.args!r} runs no command"]
    found = []
    for name in ("interval", "timeout"):
        value = flags.get(name)
        if value is None or not DURATION.match(value):
            found.append(f"HEALTHCHECK has no --{name}=DURATION")
    as_instruction = Instruction("CMD", command.strip(), check.line)
    first = shell_commands(as_instruction)[0] if shell_commands(as_instruction) else []
    if first[:2] != ["artifactfs", "status"]:
        found.append(f"HEALTHCHECK runs {command.strip()!r}, not `artifactfs status`")
    return found


def _copy_problems(
    stages: list[Stage],
    names: dict[str, Stage],
    rules: list[tuple[bool, re.Pattern[str]]],
    root: Path,
) -> list[str]:
    found = []
    copied: list[Path] = []
    for stage in stages:
        for instruction in stage.all("COPY") + stage.all("ADD"):
            flags, rest = instruction.flags_and_rest()
            words = Instruction("COPY", rest, instruction.line).exec_form() or rest.split()
            at = f"line {instruction.line}"
            if len(words) < 2:
                found.append(f"{at}: COPY needs a source and a destination")
                continue
            if "from" in flags:
                if flags["from"] not in names:
                    found.append(f"{at}: COPY --from={flags['from']} names no earlier stage")
                continue
            for source in words[:-1]:
                if source.strip("/.") == "":  # the whole context: .dockerignore decides
                    copied.append(root)
                    continue
                matches = sorted(root.glob(source.lstrip("/")))
                if not matches:
                    found.append(f"{at}: COPY source {source} does not exist")
                for path in matches:
                    relative = path.relative_to(root).as_posix()
                    if is_excluded(relative, rules):
                        found.append(f"{at}: COPY source {relative} is in .dockerignore")
                    copied.append(path)
                    for inner in path.rglob("*") if path.is_dir() else []:
                        inner_relative = inner.relative_to(root).as_posix()
                        needed = inner.is_file() and "__pycache__" not in inner.parts
                        if needed and is_excluded(inner_relative, rules):
                            found.append(f"{at}: {inner_relative} is in .dockerignore")
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    readme = project.get("readme")
    readme_file = readme if isinstance(readme, str) else (readme or {}).get("file")
    if readme_file and not any(
        (root / readme_file).resolve().is_relative_to(c.resolve()) for c in copied
    ):
        found.append(f"pyproject.toml's readme {readme_file} is not copied into the build")
    return found


def read_pins(text: str) -> dict[str, str]:
    """``name==version`` lines of a requirements file, by normalized name."""
    pins: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            if not sep or not version.strip():
                raise ParseError(f"{line!r} is not pinned to one version with ==")
            pins[canonicalize_name(name.strip())] = version.strip()
    return pins


def _release_problems(stages: list[Stage], final: Stage, root: Path) -> list[str]:
    """Stop signal, labels, and the pinned dependencies the build stage installs."""
    found = []
    stop = final.last("STOPSIGNAL")
    if stop is None or stop.args not in ("SIGTERM", "15"):
        found.append("the final stage has no STOPSIGNAL SIGTERM (what the daemon stops on)")
    labels: dict[str, str] = {}
    for instruction in final.all("LABEL"):
        labels.update(parse_env(instruction.args, {}))
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    license_ = project.get("license", {})
    expected = {
        "title": project["name"],
        "description": project["description"],
        "version": project["version"],
        "licenses": license_.get("text") if isinstance(license_, dict) else license_,
    }
    for key, value in expected.items():
        label = f"org.opencontainers.image.{key}"
        if labels.get(label) != value:
            found.append(f"LABEL {label} is {labels.get(label)!r}, not {value!r} (pyproject.toml)")

    pins_file = root / PINS
    builds_pins = any(
        words[:2] == ["pip", "wheel"]
        and any(w in ("-r", "--requirement") for w in words)
        and PINS in words
        for stage in stages[:-1]
        for run in stage.all("RUN")
        for words in shell_commands(run)
    )
    if not builds_pins:
        found.append(f"no build stage runs `pip wheel --requirement {PINS}`")
    for stage in stages[:-1]:
        if not stage.env().get("PIP_CONSTRAINT", "").endswith(f"/{BUILD_PINS}"):
            found.append(f"stage {stage.name}: PIP_CONSTRAINT is not its copy of {BUILD_PINS}")
    if not pins_file.exists():
        return [*found, f"{PINS} does not exist"]
    pins = read_pins(pins_file.read_text())
    for dependency in project.get("dependencies", []):
        requirement = Requirement(dependency)
        if requirement.marker is not None and not requirement.marker.evaluate(
            {"python_version": "3.11", "sys_platform": "linux", "platform_system": "Linux"}
        ):
            continue
        pinned = pins.get(canonicalize_name(requirement.name))
        if pinned is None:
            found.append(f"{requirement.name} (pyproject.toml) is not pinned in {PINS}")
        elif not requirement.specifier.contains(pinned, prereleases=True):
            found.append(f"{PINS} pins {requirement.name}=={pinned}, not {requirement}")
    return found


def _path_problems(final: Stage, names: dict[str, Stage]) -> list[str]:
    """``artifactfs`` must be on the final stage's PATH: a virtualenv made in a build stage,
    copied whole to the same place, its bin/ on PATH."""
    path = final.env().get("PATH", "").split(":")
    for instruction in final.all("COPY"):
        flags, rest = instruction.flags_and_rest()
        words = rest.split()
        source_stage = names.get(flags.get("from", ""))
        if source_stage is None or len(words) != 2:
            continue
        source, destination = (w.rstrip("/") for w in words)
        made = any(
            "venv" in words_ and words_[-1].rstrip("/") == source
            for run in source_stage.all("RUN")
            for words_ in shell_commands(run)
        )
        if made and source == destination and f"{destination}/bin" in path:
            return []
    return ["no virtualenv from a build stage is copied in with its bin/ on PATH"]


# -- the real files --------------------------------------------------------------------------


def test_the_dockerfile_has_no_problem() -> None:
    assert problems(DOCKERFILE.read_text(), DOCKERIGNORE.read_text()) == []


def test_the_dockerfile_parses_into_a_build_stage_and_a_final_stage() -> None:
    stages = parse_dockerfile(DOCKERFILE.read_text())
    assert [(s.base, s.name) for s in stages] == [
        ("python:3.11-slim-bookworm", "build"),
        ("python:3.11-slim-bookworm", None),
    ]
    (install,) = apt_installs(stages[0])
    assert set(install.packages) == {"gcc", "libc6-dev", "libfuse3-dev", "pkg-config"}
    assert any(
        words[:2] == ["pip", "wheel"] and words[-1] == "."
        for run in stages[0].all("RUN")
        for words in shell_commands(run)
    ), "the build stage builds the wheel from the source tree"


# -- the parser and the ignore rules on small inputs ----------------------------------------


def test_parser_comments_continuations_and_forms() -> None:
    text = (
        "# syntax=docker/dockerfile:1\n"
        "ARG BASE=x\n"
        "FROM --platform=linux/amd64 python:3.12-slim-trixie AS one\n"
        "RUN apt-get update \\\n"
        "# a comment inside a continuation is dropped\n"
        "    && apt-get install -y --no-install-recommends fuse3 \\\n"
        "    && rm -rf /var/lib/apt/lists/*\n"
        "\n"
        "from one\n"
        'ENV A=1 B="two words" C=$A/x\n'
        "ENV OLD style value\n"
        "ENTRYPOINT ['artifactfs', 'daemon']\n"
        'CMD ["-v"]\n'
    )
    one, two = parse_dockerfile(text)
    assert (one.base, one.name, two.base, two.name) == (
        "python:3.12-slim-trixie",
        "one",
        "one",
        None,
    )
    (run,) = one.all("RUN")
    assert run.line == 4
    assert shell_commands(run) == [
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", "fuse3"],
        ["rm", "-rf", "/var/lib/apt/lists/*"],
    ]
    (install,) = apt_installs(one)
    assert (install.packages, install.updated_before, install.lists_removed_after) == (
        ["fuse3"],
        True,
        True,
    )
    assert two.env() == {"A": "1", "B": "two words", "C": "1/x", "OLD": "style value"}
    entrypoint = two.last("ENTRYPOINT")
    assert entrypoint is not None and entrypoint.exec_form() is None  # single quotes: shell
    cmd = two.last("CMD")
    assert cmd is not None and cmd.exec_form() == ["-v"]


def test_parser_refuses_what_it_cannot_read() -> None:
    with pytest.raises(ParseError, match="continuation"):
        parse_dockerfile("FROM x\nRUN true \\\n")
    with pytest.raises(ParseError, match="before any FROM"):
        parse_dockerfile("RUN true\nFROM x\n")
    with pytest.raises(ParseError, match="escape"):
        parse_dockerfile("# escape=`\nFROM x\n")


def test_dockerignore_matching() -> None:
    rules = parse_dockerignore(
        "# comment\n.git\n/build\n**/__pycache__\n*.md\n!README.md\ndata/*.bin\n"
    )
    assert is_excluded(".git", rules)
    assert is_excluded(".git/objects/ab/cdef", rules)
    assert is_excluded("build/lib/x.py", rules)
    assert is_excluded("a/b/__pycache__/c.pyc", rules)
    assert is_excluded("__pycache__/c.pyc", rules)
    assert is_excluded("NOTES.md", rules)
    assert not is_excluded("README.md", rules)
    assert not is_excluded("docs/cli.md", rules)  # *.md matches at the top only
    assert is_excluded("data/x.bin", rules)
    assert not is_excluded("data/sub/x.bin", rules)
    assert not is_excluded(".gitignore", rules)
    assert not is_excluded("artifactfs/cli/__init__.py", rules)


# -- every rule can fire -------------------------------------------------------------------


def _replace_last(text: str, old: str, new: str) -> str:
    head, sep, tail = text.rpartition(old)
    assert sep, f"{old!r} is not in the Dockerfile any more: update this test"
    return head + new + tail


def _replace_first(text: str, old: str, new: str) -> str:
    assert old in text, f"{old!r} is not in the Dockerfile any more: update this test"
    return text.replace(old, new, 1)


HEALTH = "HEALTHCHECK --interval=30s --timeout=10s"

BROKEN_DOCKERFILES: list[tuple[str, Callable[[str], str], str]] = [
    (
        "not slim",
        lambda t: _replace_last(t, "FROM python:3.11-slim-bookworm", "FROM python:3.11-bookworm"),
        "is not a slim Debian python image",
    ),
    (
        "alpine",
        lambda t: _replace_last(t, "FROM python:3.11-slim-bookworm", "FROM python:3.11-alpine"),
        "is not a slim Debian python image",
    ),
    (
        "old python",
        lambda t: t.replace("python:3.11-slim-bookworm", "python:3.10-slim-bookworm"),
        "older than Python 3.11",
    ),
    (
        "stages differ",
        lambda t: _replace_first(t, "python:3.11-slim-bookworm", "python:3.12-slim-bookworm"),
        "stage build is built on python:3.12-slim-bookworm",
    ),
    (
        "no fuse3",
        lambda t: _replace_last(t, "fuse3 git", "git"),
        "fuse3 is not apt-installed",
    ),
    (
        "a compiler in the final stage",
        lambda t: _replace_last(t, "fuse3 git", "fuse3 gcc git"),
        "final stage apt packages",
    ),
    (
        "recommends",
        lambda t: _replace_last(t, "install -y --no-install-recommends", "install -y"),
        "without --no-install-recommends",
    ),
    (
        "lists kept",
        lambda t: _replace_last(t, " \\\n    && rm -rf /var/lib/apt/lists/*", ""),
        "apt lists are not removed",
    ),
    (
        "no update",
        lambda t: _replace_last(t, "apt-get update \\\n    && ", ""),
        "without apt-get update",
    ),
    (
        "entrypoint without daemon",
        lambda t: _replace_last(t, '["artifactfs", "daemon"]', '["artifactfs"]'),
        "is not exec form",
    ),
    (
        "entrypoint in shell form",
        lambda t: _replace_last(t, '["artifactfs", "daemon"]', "artifactfs daemon"),
        "is not exec form",
    ),
    (
        "entrypoint with single quotes",
        lambda t: _replace_last(t, '["artifactfs", "daemon"]', "['artifactfs', 'daemon']"),
        "is not exec form",
    ),
    (
        "no entrypoint",
        lambda t: _replace_last(t, 'ENTRYPOINT ["artifactfs", "daemon"]', ""),
        "no ENTRYPOINT",
    ),
    (
        "a CMD",
        lambda t: t + 'CMD ["--help"]\n',
        "a CMD in the final stage",
    ),
    (
        "no healthcheck",
        lambda t: re.sub(r"HEALTHCHECK .*?\n(?:    .*\n)*", "", t),
        "no HEALTHCHECK",
    ),
    (
        "healthcheck none",
        lambda t: t + "HEALTHCHECK NONE\n",
        "runs no command",
    ),
    (
        "healthcheck without timeout",
        lambda t: _replace_last(t, HEALTH, "HEALTHCHECK --interval=30s"),
        "no --timeout=DURATION",
    ),
    (
        "healthcheck with a bad interval",
        lambda t: _replace_last(t, HEALTH, "HEALTHCHECK --interval=30 --timeout=10s"),
        "no --interval=DURATION",
    ),
    (
        "healthcheck runs something else",
        lambda t: _replace_last(t, "CMD artifactfs status", "CMD artifactfs list-repos"),
        "not `artifactfs status`",
    ),
    (
        "volume elsewhere",
        lambda t: _replace_last(t, "VOLUME /var/lib/artifactfs", "VOLUME /data"),
        "is not the ARTIFACTFS_HOME",
    ),
    (
        "two volumes",
        lambda t: _replace_last(t, "VOLUME /var/lib/artifactfs", "VOLUME /var/lib/artifactfs /x"),
        "is not the ARTIFACTFS_HOME",
    ),
    (
        "home elsewhere",
        lambda t: _replace_last(t, "ENV ARTIFACTFS_HOME=/var/lib/artifactfs", "ENV X=1"),
        "ENV ARTIFACTFS_HOME is None",
    ),
    (
        "a source that does not exist",
        lambda t: _replace_first(t, "COPY pyproject.toml", "COPY setup.cfg pyproject.toml"),
        "COPY source setup.cfg does not exist",
    ),
    (
        "an ignored source",
        lambda t: _replace_first(t, "COPY pyproject.toml", "COPY tests pyproject.toml"),
        "COPY source tests is in .dockerignore",
    ),
    (
        "the readme not copied",
        lambda t: _replace_first(t, "COPY pyproject.toml README.md ./", "COPY pyproject.toml ./"),
        "readme README.md is not copied",
    ),
    (
        "from an unknown stage",
        lambda t: _replace_last(t, "COPY --from=build", "COPY --from=builder"),
        "names no earlier stage",
    ),
    (
        "no stop signal",
        lambda t: _replace_last(t, "STOPSIGNAL SIGTERM\n", ""),
        "no STOPSIGNAL SIGTERM",
    ),
    (
        "another stop signal",
        lambda t: _replace_last(t, "STOPSIGNAL SIGTERM", "STOPSIGNAL SIGINT"),
        "no STOPSIGNAL SIGTERM",
    ),
    (
        "a version label that is not the project's",
        lambda t: _replace_last(t, 'image.version="0.1.0"', 'image.version="0.0.9"'),
        "LABEL org.opencontainers.image.version is '0.0.9'",
    ),
    (
        "no title label",
        lambda t: _replace_last(t, 'org.opencontainers.image.title="artifactfs" ', ""),
        "LABEL org.opencontainers.image.title is None",
    ),
    (
        "dependencies not from the pins",
        lambda t: _replace_last(t, "--requirement container/requirements.txt", "."),
        "no build stage runs `pip wheel --requirement container/requirements.txt`",
    ),
    (
        "build tools not pinned",
        lambda t: _replace_first(t, "PIP_CONSTRAINT=/src/container/build-constraints.txt", ""),
        "PIP_CONSTRAINT is not its copy of container/build-constraints.txt",
    ),
    (
        "venv not on PATH",
        lambda t: _replace_last(t, "ENV PATH=/opt/artifactfs/bin:$PATH", "ENV PATH=$PATH"),
        "no virtualenv from a build stage",
    ),
]


@pytest.mark.parametrize(
    ("change", "expected"),
    [pytest.param(change, expected, id=name) for name, change, expected in BROKEN_DOCKERFILES],
)
def test_each_dockerfile_rule_can_fail(change: Callable[[str], str], expected: str) -> None:
    original = DOCKERFILE.read_text()
    broken = change(original)
    assert broken != original
    found = problems(broken, DOCKERIGNORE.read_text())
    assert any(expected in problem for problem in found), found


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        pytest.param(lambda t: t.replace("\n.venv\n", "\n"), "exclude .venv", id="venv"),
        pytest.param(lambda t: t.replace("\n.git\n", "\n"), "exclude .git", id="git"),
        pytest.param(lambda t: t + "!.venv/bin\n", "exclude .venv/bin/python", id="reinclude"),
        pytest.param(lambda t: t.replace("\ntests\n", "\n"), "exclude tests/", id="tests"),
        pytest.param(
            lambda t: t.replace("**/__pycache__\n", "").replace("**/*.py[cod]\n", ""),
            "__pycache__",
            id="caches",
        ),
        pytest.param(lambda t: t + "artifactfs/cli\n", "artifactfs/cli/", id="source"),
        pytest.param(lambda t: t + "*.md\n", "README.md is in .dockerignore", id="readme"),
    ],
)
def test_each_dockerignore_rule_can_fail(change: Callable[[str], str], expected: str) -> None:
    original = DOCKERIGNORE.read_text()
    broken = change(original)
    assert broken != original
    found = problems(DOCKERFILE.read_text(), broken)
    assert any(expected in problem for problem in found), found


# -- the health check's command, for real ----------------------------------------------------


def _healthcheck_command() -> str:
    check = parse_dockerfile(DOCKERFILE.read_text())[-1].last("HEALTHCHECK")
    assert check is not None
    _, rest = check.flags_and_rest()
    return rest.partition(" ")[2].strip()


def _run_healthcheck(home: Path) -> subprocess.CompletedProcess[str]:
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "artifactfs").exists():
        pytest.skip(f"no artifactfs script beside {sys.executable}")
    env = {
        **os.environ,
        "ARTIFACTFS_HOME": str(home),
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
    }
    return subprocess.run(
        ["/bin/sh", "-c", _healthcheck_command()],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_healthcheck_fails_with_status_1_when_no_daemon_answers(tmp_path: Path) -> None:
    # Docker reserves exit status 2 for health checks; `artifactfs status` uses it for "no
    # daemon", so the health check must turn it into 1.
    result = _run_healthcheck(tmp_path / "home")
    assert result.returncode == 1, result
    assert "no artifactfs daemon is running" in result.stderr


def test_healthcheck_passes_while_the_daemon_answers(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with running_daemon(home):
        result = _run_healthcheck(home)
    assert result.returncode == 0, result
    assert result.stdout.strip() == "no repositories"


# -- the pinned dependencies against pyproject.toml ------------------------------------------


@pytest.mark.parametrize(
    ("change_project", "change_pins", "expected"),
    [
        pytest.param(
            lambda t: t.replace('"trio>=0.27"', '"trio>=99"'),
            lambda t: t,
            "pins trio==0.35.0, not trio>=99",
            id="pin too old",
        ),
        pytest.param(
            lambda t: t.replace('"trio>=0.27",', '"trio>=0.27",\n    "brand-new>=1",'),
            lambda t: t,
            "brand-new (pyproject.toml) is not pinned",
            id="dependency not pinned",
        ),
        pytest.param(
            lambda t: t,
            lambda t: re.sub(r"(?m)^pyfuse3==.*\n", "", t),
            "pyfuse3 (pyproject.toml) is not pinned",
            id="pin removed",
        ),
    ],
)
def test_each_pin_rule_can_fail(
    tmp_path: Path,
    change_project: Callable[[str], str],
    change_pins: Callable[[str], str],
    expected: str,
) -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    pins = (ROOT / PINS).read_text()
    assert change_project(pyproject) != pyproject or change_pins(pins) != pins
    (tmp_path / "container").mkdir()
    (tmp_path / "pyproject.toml").write_text(change_project(pyproject))
    (tmp_path / PINS).write_text(change_pins(pins))
    stages = parse_dockerfile(DOCKERFILE.read_text())
    found = _release_problems(stages, stages[-1], tmp_path)
    assert any(expected in problem for problem in found), found


def test_pins_are_exact() -> None:
    assert read_pins("# c\nA_b==1.0  # why\n\nc==2\n") == {"a-b": "1.0", "c": "2"}
    with pytest.raises(ParseError, match="not pinned"):
        read_pins("trio>=0.27\n")
    assert all(read_pins((ROOT / name).read_text()) for name in (PINS, BUILD_PINS))
