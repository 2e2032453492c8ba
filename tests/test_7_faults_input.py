"""Faults: hostile input to the command line. Fuzzed repository names, mount paths and
SOURCEs given to a running daemon each cost one line and exit status 2, register nothing and
mount nothing."""

from __future__ import annotations

import random
from pathlib import Path

from tests.helpers.daemons import running_daemon
from tests.helpers.gitrepos import Repo
from tests.helpers.servers import GitDaemon

BAD_NAME_PIECES = ["..", "/", " ", "\t", "é", "-", ".", "$(x)", "a" * 70, "\\", "*", "~"]
BAD_PATHS = ["relative/mnt", "HOME/cas/x", "HOME/run", "FILE", "FILE/below", "MISSING/a/b"]
BAD_SOURCES = [
    "ssh://-oProxyCommand=touch%20/tmp/pwned/r",
    "-oProxyCommand=x@h:r",
    "ftp://h/r",
    "hf://o/n--m",
    "git://",
    "file:///no/such",
    "https://u:secret@h/r.git",
]


def test_fuzzed_names_paths_and_sources_change_nothing(
    daemon: GitDaemon, sample: Repo, home: Path, tmp_path: Path
) -> None:
    rng = random.Random(1234)
    (tmp_path / "file").write_bytes(b"x")
    good_source, good_name = daemon.url("sample.git"), "ok"
    with running_daemon(home) as artifactfs:
        cases: list[list[str]] = []
        for _ in range(12):  # a bad name (always: it starts with or holds a refused piece)
            name = rng.choice(BAD_NAME_PIECES[:4]) + "".join(
                rng.choice([*BAD_NAME_PIECES, "a", "1"]) for _ in range(rng.randint(0, 4))
            )
            cases.append(["add-repo", "--", name, good_source])
        for path in BAD_PATHS:  # a good name, a bad mount path
            real = (
                path.replace("HOME", str(home))
                .replace("FILE", str(tmp_path / "file"))
                .replace("MISSING", str(tmp_path / "missing"))
            )
            cases.append(["add-repo", good_name, good_source, "--mount", real])
        cases += [["add-repo", "--", good_name, source] for source in BAD_SOURCES]
        for args in cases:
            result = artifactfs.cli(*args)
            lines = result.stderr.splitlines()
            assert result.returncode == 2, (args, result.stderr)
            assert len(lines) == 1 and lines[0].startswith("artifactfs: "), (args, lines)
            assert "secret" not in result.stderr and "Traceback" not in result.stderr
        assert artifactfs.registry_rows() == []
        assert not (tmp_path / "missing").exists()
        assert not Path("/tmp/pwned").exists()
    with open("/proc/self/mountinfo") as table:
        assert not [line for line in table if str(tmp_path) in line.split()[4]]
