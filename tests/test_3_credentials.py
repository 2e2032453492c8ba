"""Credentials for private http(s) remotes, against real ``git http-backend`` demanding basic auth.

No mocks: the server refuses every request without the right token, as a git host serving a
private repository does, so each test proves what really went over the wire.
"""

from __future__ import annotations

import base64
import logging
import socket
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

from artifactfs.cas import GIT_SHA1, ContentStore, Digest
from artifactfs.errors import SourceError, UserError
from artifactfs.snapshot import SnapshotIndex
from artifactfs.sources.credentials import (
    TOKEN_ENV,
    TOKEN_FILE_ENV,
    USERNAME_ENV,
    CredentialProvider,
    Credentials,
)
from artifactfs.sources.git.remote import GitRemote
from tests.conftest import BIG, BINARY
from tests.helpers.gitrepos import Repo
from tests.helpers.ports import free_port
from tests.helpers.servers import GitDaemon, HttpGitServer
from tests.helpers.sources import git_remote

TOKEN = "ghp_s3cretT0kenValue42"
ROTATED = "ghp_r0tatedT0kenValue77"
WRONG = "ghp_wr0ngT0kenValue13"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the developer's shell exports must not decide these tests."""
    for name in (TOKEN_ENV, TOKEN_FILE_ENV, USERNAME_ENV):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def private(repos: Path) -> Iterator[HttpGitServer]:
    server = HttpGitServer(repos, token=TOKEN)
    try:
        yield server
    finally:
        server.stop()


def source_for(
    url: str, tmp_path: Path, credentials: CredentialProvider | None = None
) -> GitRemote:
    return git_remote(url, tmp_path, credentials=credentials or CredentialProvider())


def fetch(source: GitRemote, repo: Repo, path: str, cas: ContentStore) -> bytes:
    oid = repo.blob_id(path)
    assert source.fetch_blobs({oid: None}) == {oid}
    return cas.path_of(Digest(GIT_SHA1, oid)).read_bytes()


def secrets_in(text: str, *tokens: str) -> list[str]:
    """Every token, or its basic-auth header form, that ``text`` contains."""
    found = []
    for token in tokens:
        encoded = base64.b64encode(f"x-access-token:{token}".encode()).decode()
        found += [form for form in (token, encoded) if form in text]
    return found


def test_the_right_token_prepares_and_fetches(
    private: HttpGitServer, sample: Repo, tmp_path: Path
) -> None:
    cas = ContentStore(tmp_path / "cas")
    source = source_for(private.url("sample.git"), tmp_path, CredentialProvider(token=TOKEN))
    prepared = source.prepare()
    assert prepared.commit == sample.commit
    index = SnapshotIndex(prepared.path)
    try:
        assert index.meta.sizes == "complete"  # object-info authenticated too
    finally:
        index.close()
    assert fetch(source, sample, "data/big.bin", cas) == BIG
    assert private.refused == 0  # sent up front: no 401 round trip first
    assert len(private.authorizations) == len(private.requests) > 3


@pytest.mark.parametrize(
    ("credentials", "note"),
    [
        (CredentialProvider.none(), "no token was given (set ARTIFACTFS_GIT_TOKEN or"),
        (CredentialProvider(token=WRONG), "sent the token from the token given"),
    ],
    ids=["no-token", "wrong-token"],
)
def test_a_refusal_is_one_line_naming_authentication(
    private: HttpGitServer,
    sample: Repo,
    tmp_path: Path,
    credentials: CredentialProvider,
    note: str,
) -> None:
    source = source_for(private.url("sample.git"), tmp_path, credentials)
    with pytest.raises(SourceError) as failure:
        source.prepare()
    message = str(failure.value)
    assert message.startswith("authentication required or refused by the server (401); ")
    assert note in message
    assert "\n" not in message
    assert private.refused == 1
    whole = "".join(traceback.format_exception(failure.value))  # the chained causes too
    assert not secrets_in(whole, TOKEN, WRONG)


def test_a_403_reads_as_a_refusal_too(repos: Path, sample: Repo, tmp_path: Path) -> None:
    server = HttpGitServer(repos, token=TOKEN, refusal_status=403)
    try:
        source = source_for(server.url("sample.git"), tmp_path, CredentialProvider(token=WRONG))
        with pytest.raises(SourceError, match=r"refused by the server \(403\); sent the token"):
            source.prepare()
    finally:
        server.stop()


def test_a_missing_repository_is_one_line(private: HttpGitServer, tmp_path: Path) -> None:
    source = source_for(private.url("nope.git"), tmp_path, CredentialProvider(token=TOKEN))
    with pytest.raises(SourceError, match=r"^repository not found \(404\)"):
        source.prepare()


def test_a_token_file_is_read_again_at_every_fetch(
    private: HttpGitServer, sample: Repo, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(f"  {TOKEN}\n")  # surrounding whitespace is not part of it
    cas = ContentStore(tmp_path / "cas")
    source = source_for(
        private.url("sample.git"), tmp_path, CredentialProvider(token_file=token_file)
    )
    source.prepare()
    assert fetch(source, sample, "README.md", cas) == b"# sample\n"

    private.token = ROTATED  # the host rotates the token, and so does whoever fills the file
    token_file.write_text(ROTATED + "\n")
    assert fetch(source, sample, "data/binary.dat", cas) == BINARY
    assert private.refused == 0

    private.token = TOKEN  # rotated again, but the file was not: the old token is refused
    with pytest.raises(SourceError, match=r"refused.*sent the token from the token file"):
        fetch(source, sample, "deep/a/b/c/d/leaf.txt", cas)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "cannot read the token file .*: no such file or directory"),
        (b"  \n", "the token file .* is empty"),
        (b"one\ntwo\n", "the token file .* holds more than one line or control characters"),
        (b"\xff\xfe", "the token file .* is not text"),
    ],
    ids=["missing", "empty", "two-lines", "binary"],
)
def test_an_unusable_token_file_is_one_clear_line(
    private: HttpGitServer, tmp_path: Path, content: bytes | None, reason: str
) -> None:
    token_file = tmp_path / "token"
    if content is not None:
        token_file.write_bytes(content)
    provider = CredentialProvider(token_file=token_file)
    source = source_for(private.url("sample.git"), tmp_path, provider)
    with pytest.raises(SourceError, match=f"^{reason}$"):
        source.prepare()
    with pytest.raises(UserError, match=f"^{reason}$"):
        provider.check()
    assert private.requests == []  # nothing was sent without the token


def test_credentials_are_never_shown(tmp_path: Path) -> None:
    credentials = Credentials("x-access-token", TOKEN)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    providers = [
        CredentialProvider(token=TOKEN),
        CredentialProvider(token_file=token_file),
        CredentialProvider(environ={TOKEN_ENV: TOKEN}),
    ]
    for shown in (credentials, *providers):
        assert TOKEN not in repr(shown) and TOKEN not in str(shown) and TOKEN not in f"{shown}"
    assert repr(credentials) == "Credentials(username='x-access-token', token='***')"
    assert [p.origin for p in providers] == [
        "the token given",
        f"the token file {token_file}",
        "$ARTIFACTFS_GIT_TOKEN",
    ]
    assert [p.credentials() for p in providers] == [credentials] * 3
    assert CredentialProvider.none().credentials() is None


def test_the_token_comes_from_the_environment(
    private: HttpGitServer, sample: Repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = private.url("sample.git")
    with pytest.raises(SourceError, match="no token was given"):
        source_for(url, tmp_path).prepare()
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    cas = ContentStore(tmp_path / "cas")
    for source in (source_for(url, tmp_path), source_for(url, tmp_path, CredentialProvider())):
        source.prepare()
        assert fetch(source, sample, "README.md", cas) == b"# sample\n"


def test_precedence_given_token_then_file_then_environment(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(ROTATED)
    env = {TOKEN_ENV: WRONG, TOKEN_FILE_ENV: str(token_file)}

    def token(provider: CredentialProvider) -> str | None:
        found = provider.credentials()
        return None if found is None else found.token

    assert token(CredentialProvider(token=TOKEN, environ=env)) == TOKEN
    assert token(CredentialProvider(environ=env)) == ROTATED
    assert token(CredentialProvider(environ={TOKEN_ENV: WRONG})) == WRONG
    assert token(CredentialProvider(environ={TOKEN_ENV: ""})) is None  # empty means unset
    with pytest.raises(UserError, match="the token given is empty"):
        CredentialProvider(token=" ")
    with pytest.raises(UserError, match="not a valid username"):
        CredentialProvider(username="a:b")


def test_the_username_comes_from_the_url_then_the_environment(
    repos: Path, sample: Repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for username, url_user, env_user in [
        ("x-access-token", "", None),
        ("bot", "", "bot"),
        ("alice", "alice@", "bot"),
    ]:
        if env_user:
            monkeypatch.setenv(USERNAME_ENV, env_user)
        server = HttpGitServer(repos, token=TOKEN, username=username)
        try:
            url = server.url("sample.git").replace("//", f"//{url_user}")
            source_for(url, tmp_path, CredentialProvider(token=TOKEN)).prepare()
            assert server.refused == 0, username
        finally:
            server.stop()


def test_a_password_in_the_url_wins(private: HttpGitServer, sample: Repo, tmp_path: Path) -> None:
    url = private.url("sample.git").replace("//", f"//user:{TOKEN}@")
    source = source_for(url, tmp_path, CredentialProvider(token=WRONG))
    assert source.prepare().commit == sample.commit


def test_other_transports_never_ask_for_a_token(
    daemon: GitDaemon, sample: Repo, tmp_path: Path
) -> None:
    """git:// and local remotes never see the token (a missing token file would fail if asked)."""
    unusable = CredentialProvider(token_file=tmp_path / "missing")
    cas = ContentStore(tmp_path / "cas")
    for url in (daemon.url("sample.git"), str(sample.path)):
        source = source_for(url, tmp_path, unusable)
        assert source.prepare().commit == sample.commit
        assert fetch(source, sample, "README.md", cas) == b"# sample\n"


def test_the_token_never_reaches_the_logs(
    private: HttpGitServer, sample: Repo, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for name in (None, "dulwich", "urllib3", "artifactfs"):
        caplog.set_level(logging.DEBUG, logger=name)
    cas = ContentStore(tmp_path / "cas")
    url = private.url("sample.git")
    source = source_for(url, tmp_path, CredentialProvider(token=TOKEN))
    source.prepare()
    fetch(source, sample, "data/big.bin", cas)
    with pytest.raises(SourceError):
        source_for(url, tmp_path, CredentialProvider(token=WRONG)).prepare()
    assert any(record.name.startswith("urllib3") for record in caplog.records)  # it did log
    everything = "\n".join(
        f"{record.getMessage()} {record.args!r} {record.exc_text or ''}"
        for record in caplog.records
    )
    assert not secrets_in(everything + caplog.text, TOKEN, WRONG)


def test_http_connection_failures_are_one_line(tmp_path: Path) -> None:
    """What urllib3 raises (wrapped by dulwich, after its retries) reads like the other
    transports' failures, not as a dump of urllib3's exception chain."""
    with pytest.raises(SourceError, match=r"^connection refused$"):
        source_for(f"http://127.0.0.1:{free_port()}/x.git", tmp_path).prepare()
    silent = socket.create_server(("127.0.0.1", 0))
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(0.3)  # what --io-timeout sets
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/x.git"
        started = time.monotonic()
        with pytest.raises(SourceError, match=r"^timed out waiting for the server$"):
            source_for(url, tmp_path).prepare()
        assert time.monotonic() - started < 0.6  # one timeout, not urllib3's four
    finally:
        socket.setdefaulttimeout(previous)
        silent.close()
