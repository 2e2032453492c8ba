"""docs/sandbox.md's Kubernetes manifest and container commands, checked without a cluster.

The manifest is validated against the Pod schema of the oldest Kubernetes it claims (1.29:
sidecars are restartable init containers) and of the newest that kubernetes-validate knows,
strictly (an unknown or misplaced field fails). What a schema cannot say is checked by hand:
the sidecar restarts, ``Bidirectional`` only in a privileged container, the sandbox reads with
``HostToContainer`` and holds no state volume, the paths are the image's, and every
``artifactfs`` command in the manifest and in the page's shell blocks parses with the real
command-line parser. Each check is shown to fail on a copy broken in one place.
"""

from __future__ import annotations

import argparse
import copy
import re
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from artifactfs.cli import _parser

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "sandbox.md"
VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
HOME = "/var/lib/artifactfs"


def yaml_blocks(text: str) -> list[dict[str, Any]]:
    return [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", text, re.S)]


def the_pod() -> dict[str, Any]:
    (pod,) = [doc for doc in yaml_blocks(DOC.read_text()) if doc.get("kind") == "Pod"]
    return pod


def schema_problems(manifest: dict[str, Any]) -> list[str]:
    found = []
    for version in VERSIONS:
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            found.append(f"Kubernetes {version}: {exc.message} at {list(exc.path)}")
    return found


def parse_problem(argv: list[str]) -> str | None:
    """Why the artifactfs command line ``argv`` (after ``artifactfs``) does not parse."""
    try:
        _parser().parse_args(argv)
    except SystemExit:
        return f"`artifactfs {shlex.join(argv)}` does not parse"
    return None


def subcommands() -> set[str]:
    actions = [a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return {name for action in actions for name in action.choices}


def artifactfs_commands(script: str) -> Iterator[list[str]]:
    """The arguments of each ``artifactfs COMMAND ...`` in a shell script: continuations
    joined (a backslash, or a line ending in ``||``, ``&&`` or ``|``), split at ``&&``,
    ``||``, ``;``, ``|``, ``&`` and line ends, redirections and comments dropped. The program is
    the word ``artifactfs`` followed by one of its commands, so in ``docker exec artifactfs
    artifactfs status`` the first (the container) is passed over."""
    commands = subcommands()
    text = re.sub(r"(\|\||&&|\|)[ \t]*\n", r"\1 ", script.replace("\\\n", " "))
    for line in text.splitlines():
        line = re.sub(r"\s\d?>>?(?:&\d|\s*[^\s;&|]+)", " ", line)
        lexer = shlex.shlex(line, posix=True, punctuation_chars="&|;")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        words: list[str] = []
        for token in [*lexer, ";"]:
            if token not in ("&&", "||", ";", "|", "&"):
                words.append(token)
                continue
            for index, word in enumerate(words[:-1]):
                if word == "artifactfs" and words[index + 1] in commands:
                    yield words[index + 1 :]
                    break
            words = []


def pod_problems(pod: dict[str, Any]) -> list[str]:
    found = schema_problems(pod)
    spec = pod["spec"]
    init = {c["name"]: c for c in spec.get("initContainers", [])}
    main = {c["name"]: c for c in spec.get("containers", [])}
    sidecar = init.get("artifactfs")
    if sidecar is None:
        return [*found, "no init container named artifactfs (the sidecar)"]
    if sidecar.get("restartPolicy") != "Always":
        found.append("the artifactfs init container is not a sidecar (restartPolicy: Always)")
    for container in [*init.values(), *main.values()]:
        privileged = container.get("securityContext", {}).get("privileged") is True
        for mount in container.get("volumeMounts", []):
            if mount.get("mountPropagation") == "Bidirectional" and not privileged:
                found.append(f"{container['name']}: Bidirectional without privileged")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mounts = {m["mountPath"]: m for m in sidecar.get("volumeMounts", [])}
    state = mounts.get(HOME)
    if state is None:
        found.append(f"the sidecar does not mount its state at {HOME} (the image's VOLUME)")
    shared = [m for m in mounts.values() if m.get("mountPropagation") == "Bidirectional"]
    if len(shared) != 1:
        found.append("the sidecar has not exactly one Bidirectional volume")
    for probe in ("startupProbe", "livenessProbe"):
        if sidecar.get(probe, {}).get("exec", {}).get("command") != ["artifactfs", "status"]:
            found.append(f"the sidecar's {probe} is not `artifactfs status`")
    readers = [c for c in main.values() if c["name"] == "sandbox"]
    for reader in readers:
        for mount in reader.get("volumeMounts", []):
            propagation = mount.get("mountPropagation")
            if shared and mount["name"] == shared[0]["name"] and propagation != "HostToContainer":
                found.append("the sandbox reads the mounts without HostToContainer")
            if state is not None and mount["name"] == state["name"]:
                found.append("the sandbox mounts the daemon's state (and so its socket)")
    if not readers:
        found.append("no container named sandbox")
    for container in [*init.values(), *main.values()]:
        command = container.get("command", [])
        if container.get("image", "").endswith("artifactfs:0.1.0") and command[:2] == [
            "sh",
            "-c",
        ]:
            for argv in artifactfs_commands(command[2]):
                if (problem := parse_problem(argv)) is not None:
                    found.append(f"{container['name']}: {problem}")
    for name in volumes:
        if not any(
            m["name"] == name
            for c in [*init.values(), *main.values()]
            for m in c.get("volumeMounts", [])
        ):
            found.append(f"volume {name} is mounted nowhere")
    return found


def test_the_kubernetes_manifest_has_no_problem() -> None:
    assert pod_problems(the_pod()) == []


def _edit(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    pod = copy.deepcopy(the_pod())
    change(pod)
    return pod


def _sidecar(pod: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = next(
        c for c in pod["spec"]["initContainers"] if c["name"] == "artifactfs"
    )
    return found


def _container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    every = pod["spec"]["initContainers"] + pod["spec"]["containers"]
    found: dict[str, Any] = next(c for c in every if c["name"] == name)
    return found


BROKEN: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    (
        "a misspelled field",
        lambda p: _sidecar(p)["volumeMounts"][0].update(mountPropogation="Bidirectional"),
        "Kubernetes 1.29.0",
    ),
    (
        "a field in the wrong place",
        lambda p: _sidecar(p)["securityContext"].update(restartPolicy="Always"),
        "Kubernetes 1.29.0",
    ),
    (
        "not a sidecar",
        lambda p: _sidecar(p).pop("restartPolicy"),
        "not a sidecar",
    ),
    (
        "not privileged",
        lambda p: _sidecar(p)["securityContext"].update(privileged=False),
        "Bidirectional without privileged",
    ),
    (
        "the sandbox without propagation",
        lambda p: _container(p, "sandbox")["volumeMounts"][0].pop("mountPropagation"),
        "without HostToContainer",
    ),
    (
        "state elsewhere",
        lambda p: _sidecar(p)["volumeMounts"][1].update(mountPath="/state"),
        "does not mount its state",
    ),
    (
        "a probe that is not status",
        lambda p: _sidecar(p)["livenessProbe"]["exec"].update(command=["true"]),
        "livenessProbe is not `artifactfs status`",
    ),
    (
        "a flag that does not exist",
        lambda p: _container(p, "add-repos")["command"].__setitem__(
            2, _container(p, "add-repos")["command"][2].replace("--allow-other", "--allow-others")
        ),
        "does not parse",
    ),
    (
        "the sandbox given the state",
        lambda p: _container(p, "sandbox")["volumeMounts"].append(
            {"name": "artifactfs-state", "mountPath": "/state"}
        ),
        "the sandbox mounts the daemon's state",
    ),
]


@pytest.mark.parametrize(
    ("change", "expected"), [pytest.param(c, e, id=name) for name, c, e in BROKEN]
)
def test_each_manifest_check_can_fail(
    change: Callable[[dict[str, Any]], None], expected: str
) -> None:
    found = pod_problems(_edit(change))
    assert any(expected in problem for problem in found), found


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, re.S)


def test_every_artifactfs_command_of_the_page_parses() -> None:
    checked = []
    for block in re.findall(r"```sh\n(.*?)```", DOC.read_text(), re.S):
        for argv in artifactfs_commands(block):
            assert parse_problem(argv) is None, parse_problem(argv)
            checked.append(argv[0])
    assert {"add-repo", "status", "daemon"} <= set(checked), checked


def test_the_command_splitter() -> None:
    script = (
        "set -e\nmkdir -p /x  # artifactfs status x\n"
        "artifactfs status app >/dev/null 2>&1 ||\n"
        "  artifactfs add-repo --depth 1 a \\\n    b --mount /x\n"
        "docker exec artifactfs artifactfs prepare app; docker exec artifactfs ls /x\n"
        "artifactfs daemon &  # as yourself\nartifactfs unmount app\n"
    )
    assert list(artifactfs_commands(script)) == [
        ["status", "app"],
        ["add-repo", "--depth", "1", "a", "b", "--mount", "/x"],
        ["prepare", "app"],
        ["daemon"],
        ["unmount", "app"],
    ]
    assert parse_problem(["add-repo", "--no-such-flag", "a", "b"]) is not None
