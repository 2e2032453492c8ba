"""The log check (tests/helpers/checklogs.py) can fail: fake logs in a fake state home, with the
lines the check must report, and the declarations that must (and must not) silence them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.checklogs import LogCheck

INFO = "2024-05-01 10:00:00,001 4242 INFO artifactfs.mount.worker: mounted at /x"
ERROR = "2024-05-01 10:00:00,002 4242 ERROR artifactfs.fs.gated: prepare failed: refused"
WARNING = "2024-05-01 10:00:00,003 4243 WARNING artifactfs.fetching: slow server"
TRACE = [
    "Traceback (most recent call last):",
    '  File "/x/worker.py", line 3, in run',
    "    boom()",
    "ValueError: boom",
]
TRACE_CHAIN = "During handling of the above exception, another exception occurred:"
LOGGED_CRASH = "2024-05-01 10:00:00,004 4242 ERROR artifactfs.fs.gated: unexpected error in read"


@pytest.fixture
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the fake logs go: not under this test's own tmp_path, which the real check reads."""
    return tmp_path_factory.mktemp("fake-logs")


def write(path: Path, *lines: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path


def mount_log(root: Path, *lines: str) -> Path:
    return write(root / "home" / "run" / "logs" / "mount-x-1.log", *lines)


def report(
    root: Path, *patterns: str, level: str | None = None, required: bool = False
) -> str | None:
    """The check's report on ``root``, with ``patterns`` declared."""
    check = LogCheck([root])
    for pattern in patterns:
        check.expect(pattern, level=level, required=required)
    return check.report()


def reported_lines(text: str | None) -> list[str]:
    assert text is not None
    return text.splitlines()[1:]


def test_quiet_logs_pass(root: Path) -> None:
    mount_log(root, INFO)
    write(root / "mnt.stderr", "artifactfs: mounted")
    assert report(root) is None


def test_an_error_and_a_warning_in_a_log_file_fail(root: Path) -> None:
    path = mount_log(root, INFO, ERROR, WARNING)
    assert reported_lines(report(root)) == [
        f"{path}:2:",
        f"    {ERROR}",
        f"{path}:3:",
        f"    {WARNING}",
    ]


def test_a_declared_line_passes_and_only_it(root: Path) -> None:
    path = mount_log(root, INFO, ERROR, WARNING)
    assert report(root, "prepare failed: refused", "slow server") is None
    assert reported_lines(report(root, "prepare failed", level="ERROR")) == [
        f"{path}:3:",
        f"    {WARNING}",
    ]


def test_a_declaration_at_another_level_does_not_match(root: Path) -> None:
    mount_log(root, ERROR)
    assert report(root, "prepare failed", level="WARNING") is not None


def test_a_declaration_never_matches_the_logger_name_or_the_prefix(root: Path) -> None:
    mount_log(root, ERROR)
    assert report(root, "gated") is not None
    assert report(root, "4242") is not None
    assert report(root, "^prepare failed: refused$") is None


def test_a_required_line_that_never_came_fails(root: Path) -> None:
    mount_log(root, INFO)
    assert report(root, "refused") is None
    assert reported_lines(report(root, "refused", required=True)) == [
        "an expected line never came: 'refused'"
    ]
    mount_log(root, ERROR)
    assert report(root, "refused", required=True) is None


def test_a_traceback_in_a_log_record_is_part_of_it(root: Path) -> None:
    path = mount_log(root, INFO, LOGGED_CRASH, *TRACE, INFO)
    assert reported_lines(report(root)) == [f"{path}:2:", f"    {LOGGED_CRASH}"] + [
        f"    {line}" for line in TRACE
    ]
    assert report(root, "ValueError: boom") is None  # the traceback is its text


def test_a_long_traceback_is_shown_by_both_ends(root: Path) -> None:
    record = [LOGGED_CRASH, TRACE[0], *(f"  frame {i}" for i in range(40)), TRACE[-1]]
    path = mount_log(root, *record)
    assert reported_lines(report(root)) == [
        f"{path}:1:",
        *(f"    {line}" for line in record[:12]),
        "    [... 19 lines]",
        *(f"    {line}" for line in record[-12:]),
    ]


def test_a_traceback_at_info_fails(root: Path) -> None:
    mount_log(root, INFO, *TRACE)
    assert report(root) is not None


def test_a_crash_on_stderr_fails(root: Path) -> None:
    path = write(root / "mnt.stderr", "artifactfs: mounted", *TRACE)
    assert reported_lines(report(root)) == [f"{path}:1:", "    artifactfs: mounted"] + [
        f"    {line}" for line in TRACE
    ]
    # a declared warning just before it does not hide it: the traceback alone is matched
    assert report(root, "mounted") is not None
    assert report(root, "ValueError: boom") is None


def test_a_bare_traceback_on_a_worker_stderr_fails(root: Path) -> None:
    path = write(root / "home" / "run" / "logs" / "worker-x.stderr", "noise", "", *TRACE)
    lines = reported_lines(report(root))
    assert lines[0] == f"{path}:1:"
    assert lines[-1] == "    ValueError: boom"


def test_the_stderr_echo_of_a_logged_exception_is_judged_in_the_log_file(root: Path) -> None:
    mount_log(root, INFO, LOGGED_CRASH, *TRACE)
    write(root / "mnt.stderr", "artifactfs: unexpected error in read", *TRACE)
    lines = reported_lines(report(root))
    assert [line for line in lines if not line.startswith(" ")] == [
        f"{root}/home/run/logs/mount-x-1.log:2:"
    ]
    assert report(root, "unexpected error in read", level="ERROR") is None


def test_a_chained_traceback_is_one_block(root: Path) -> None:
    chain = [*TRACE, "", TRACE_CHAIN, "", *TRACE]
    path = write(root / "daemon.stderr", *chain)
    lines = reported_lines(report(root))
    assert lines == [f"{path}:1:"] + [f"    {line}" for line in chain]


def test_a_logging_error_fails(root: Path) -> None:
    path = write(
        root / "home-daemon.stderr",
        "artifactfs: started",
        "--- Logging error ---",
        *TRACE,
        "Call stack:",
        "Message: 'fetched %d of %s'",
        "Arguments: ('x',)",
    )
    lines = reported_lines(report(root))
    assert lines[:2] == [f"{path}:2:", "    --- Logging error ---"]
    assert report(root, r"Message: 'fetched %d of %s'") is None


def test_other_files_are_not_read(root: Path) -> None:
    write(root / "repos" / "x.log", ERROR)  # not a state home's log directory
    write(root / "home" / "run" / "logs" / "notes.txt", ERROR)
    assert report(root) is None


def test_collected_and_watched_directories_are_read(root: Path) -> None:
    elsewhere = root / "elsewhere"
    mount_log(elsewhere, ERROR)
    check = LogCheck([root / "nothing"])
    check.collect(elsewhere)
    (elsewhere / "home" / "run" / "logs" / "mount-x-1.log").unlink()  # as a fixture would
    assert check.report() is not None
    later = LogCheck([root / "nothing"])
    later.watch(elsewhere)
    assert later.report() is None
    mount_log(elsewhere, WARNING)
    assert later.report() is not None


def test_an_unknown_level_is_refused(root: Path) -> None:
    with pytest.raises(ValueError, match="level must be one of"):
        LogCheck([root]).expect("x", level="INFO")


def test_the_autouse_check_fails_a_test_and_a_declaration_passes_it(
    pytester: pytest.Pytester,
) -> None:
    """The wiring, end to end: a test whose logs hold an undeclared ERROR errors at teardown;
    the same test with the line declared passes."""
    pytester.makeconftest("from tests.conftest import _no_mount_left_behind, expect_log, log_check")
    pytester.makepyfile(
        f"""
        LINE = {ERROR!r}

        def write(tmp_path):
            logs = tmp_path / "home" / "run" / "logs"
            logs.mkdir(parents=True)
            (logs / "mount-x-1.log").write_text(LINE + "\\n")

        def test_undeclared(tmp_path):
            write(tmp_path)

        def test_declared(tmp_path, expect_log):
            expect_log("^prepare failed: refused$", level="ERROR", required=True)
            write(tmp_path)

        def test_required_but_absent(expect_log):
            expect_log("^prepare failed", required=True)
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_undeclared*",
            "unexpected lines in the artifactfs logs *",
            "*/test_undeclared0/home/run/logs/mount-x-1.log:1:",
            f"    {ERROR}",
            "*ERROR at teardown of test_required_but_absent*",
            "unexpected lines in the artifactfs logs *",
            "an expected line never came: '^prepare failed'",
        ]
    )
