"""A worker is described once (``mount.launch.WorkerOptions``) and reaches ``launch`` two ways:
as a command line (``artifactfs mount ...``, what the daemon starts and ``ps`` shows) and as
JSON (what a spare worker is handed). Both ways must give back the very same options."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from artifactfs import cli
from artifactfs.cli import mount_commands
from artifactfs.mount.launch import WorkerOptions

CASES = [
    WorkerOptions("git://127.0.0.1/x.git", "/tmp/mnt"),
    WorkerOptions(
        "hf://org/model@main",
        "/srv/mnt/model",
        ref="v1",
        token_file="/run/token",
        token_stdin=True,
        keep_failed=True,
        io_timeout=2.5,
        allow_other=True,
        verbose=2,
        name="model",
        control_socket="/home/x/run/workers/model.sock",
        offline=True,
        writable=True,
        require_commit="a" * 40,
        cache_max_size="10G",
        record_profile="/tmp/profile.txt",
        depth=3,
    ),
    WorkerOptions("git://127.0.0.1/x.git", "/tmp/mnt", writable=False),
]


@pytest.mark.parametrize("options", CASES)
def test_the_command_line_gives_back_the_options(
    options: WorkerOptions, monkeypatch: pytest.MonkeyPatch
) -> None:
    launched: list[WorkerOptions] = []

    def launch(given: WorkerOptions, stdin: Any = None) -> int:
        launched.append(given)
        return 0

    monkeypatch.setattr("artifactfs.mount.launch.launch", launch)
    assert cli.main(options.command_line()) == 0
    assert launched == [options]


@pytest.mark.parametrize("options", CASES)
def test_json_gives_back_the_options(options: WorkerOptions) -> None:
    assert WorkerOptions.from_json(options.to_json()) == options


def test_every_option_of_the_mount_command_is_a_worker_option() -> None:
    parser = argparse.ArgumentParser()
    mount_commands.add_parsers(parser.add_subparsers())
    args = parser.parse_args(["mount", "SOURCE", "MOUNTPOINT"])
    names = set(vars(args)) - {"run"}
    assert names == {field for field in WorkerOptions.__dataclass_fields__}
