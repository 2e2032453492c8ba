"""Parsing what users type: sources, refs, and keeping credentials out of sight."""

from __future__ import annotations

from pathlib import Path

import pytest

from artifactfs.errors import UserError
from artifactfs.redact import mask_userinfo
from artifactfs.sources import check_ref, parse_source
from artifactfs.sources.hub.spec import HubSourceSpec
from artifactfs.sources.spec import redact_url


@pytest.mark.parametrize(
    ("text", "transport", "url"),
    [
        ("git://example.com/repo.git", "git", "git://example.com/repo.git"),
        ("GIT://example.com:9418/a/b.git", "git", "git://example.com:9418/a/b.git"),
        ("https://example.com/org/repo", "https", "https://example.com/org/repo"),
        ("http://127.0.0.1:8080/x.git", "http", "http://127.0.0.1:8080/x.git"),
        ("ssh://git@example.com/org/repo.git", "ssh", "ssh://git@example.com/org/repo.git"),
        ("git+ssh://example.com/repo", "ssh", "git+ssh://example.com/repo"),
        ("git@example.com:org/repo.git", "ssh", "git@example.com:org/repo.git"),
    ],
)
def test_remote_sources(text: str, transport: str, url: str) -> None:
    spec = parse_source(text)
    assert (spec.transport, spec.url, spec.display) == (transport, url, url)


def test_local_sources(tmp_path: Path) -> None:
    bare = tmp_path / "bare.git"
    (bare / "objects").mkdir(parents=True)
    (bare / "HEAD").write_text("ref: refs/heads/main\n")
    work = tmp_path / "work"
    (work / ".git").mkdir(parents=True)
    assert parse_source(str(bare)).url == str(bare)
    assert parse_source(f"file://{bare}").url == str(bare)
    assert parse_source(f"file://{bare}").display == f"file://{bare}"
    assert parse_source(str(work)).transport == "file"
    with pytest.raises(UserError, match="no git repository"):
        parse_source(str(tmp_path))


def test_credentials_are_kept_for_the_transport_but_never_displayed() -> None:
    spec = parse_source("https://user:s3cret@example.com/org/repo.git")
    assert spec.url == "https://user:s3cret@example.com/org/repo.git"
    assert spec.display == "https://user:***@example.com/org/repo.git"
    assert redact_url("https://ghp_TOKEN@example.com/x") == "https://***@example.com/x"
    assert redact_url("git://example.com/x") == "git://example.com/x"
    assert redact_url("https://a:b@[::1/x") == "https://***@[::1/x"
    assert mask_userinfo("failed: https://u:p@h/x and ssh://k@h/y") == (
        "failed: https://***@h/x and ssh://***@h/y"
    )
    assert mask_userinfo("https://u:p@ss@host/x") == "https://***@host/x"


@pytest.mark.parametrize(
    "text",
    [
        "",
        " git://x/y",
        "git://x/y\n",
        "ftp://x/y",
        "git://",
        "git:///x",
        "git://host/",
        "git://host:99999/x",
        "https://host/x?y=1",
        "file://remote-host/x",
        "hf://",
        "hf://a/b/c",
        "hf://org/na--me",
        "hf://org/model@",
        "hf://-org/model",
        "hf://org/x@a..b",
    ],
)
def test_bad_sources(text: str) -> None:
    with pytest.raises(UserError):
        parse_source(text)


@pytest.mark.parametrize("ref", ["main", "v1.0", "feature/x", "refs/heads/main", "a" * 40])
def test_good_refs(ref: str) -> None:
    assert check_ref(ref) == ref


@pytest.mark.parametrize(
    "ref",
    [
        "",
        "a..b",
        "-rf",
        "x y",
        "x~1",
        "x^",
        "x:y",
        "a?",
        "a*",
        "a[",
        "a\\b",
        "x.lock",
        "/x",
        "x/",
        "a//b",
        "@{u}",
        "x\x00",
        "a" * 256,
    ],
)
def test_bad_refs(ref: str) -> None:
    with pytest.raises(UserError, match="not a valid ref name"):
        check_ref(ref)


@pytest.mark.parametrize(
    ("text", "repo_type", "repo_id", "revision"),
    [
        ("hf://org/model", "model", "org/model", None),
        ("hf://gpt2", "model", "gpt2", None),
        ("hf://org/model@v1.0", "model", "org/model", "v1.0"),
        ("hf://models/org/model", "model", "org/model", None),
        ("hf://datasets/org/data@refs/pr/1", "dataset", "org/data", "refs/pr/1"),
        ("hf://spaces/org/app", "space", "org/app", None),
    ],
)
def test_hub_sources(text: str, repo_type: str, repo_id: str, revision: str | None) -> None:
    spec = parse_source(text)
    assert isinstance(spec, HubSourceSpec)
    assert (spec.repo_type, spec.repo_id, spec.revision) == (repo_type, repo_id, revision)
    assert parse_source(spec.url) == spec


def test_a_hub_revision_is_given_once() -> None:
    spec = parse_source("hf://org/model")
    assert spec.with_ref("dev") == parse_source("hf://org/model@dev")
    assert parse_source("hf://org/model@dev").with_ref("dev") == parse_source("hf://org/model@dev")
    with pytest.raises(UserError, match="already names a revision"):
        parse_source("hf://org/model@dev").with_ref("main")


@pytest.mark.parametrize(
    "text",
    [
        "ssh://-oProxyCommand=touch%20/tmp/x/repo",
        "ssh://-oProxyCommand=x@example.com/repo",
        "git+ssh://-x/repo",
        "ssh://%2DoProxyCommand=x@example.com/repo",
        "ssh://a%20b@example.com/repo",
        "ssh://a%0Ab@example.com/repo",
        "-oProxyCommand=x@example.com:repo",
        "git://-host/repo",
        "https://-host.example.com/repo",
    ],
)
def test_hosts_and_users_that_a_transport_could_misread_are_refused(text: str) -> None:
    with pytest.raises(UserError, match="starts with '-' or holds spaces or control") as refused:
        parse_source(text)
    assert "oProxyCommand=x@" not in str(refused.value).split("its ")[-1]  # no user name shown


def test_fuzzed_sources_fail_in_one_line_or_parse(tmp_path: Path) -> None:
    """Random printable junk around URL syntax: a ``UserError`` (one line) or a spec, never
    anything else."""
    import random

    rng = random.Random(11)
    pieces = ["ssh://", "git://", "https://", "hf://", "file://", "-", "@", ":", "/", "%2D"]
    pieces += ["%00", "..", "host", "org/name", "[::1]", ":99999", "?q", "#f", "~", "\\"]
    for _ in range(2000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 6)))
        try:
            spec = parse_source(text)
        except UserError as exc:
            assert "\n" not in str(exc)
        else:
            assert spec.display and spec.kind in ("git", "hub")
