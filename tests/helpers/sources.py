"""Sources opened as a mount would open them, for tests that drive a source without a mount.

Every test source keeps its CAS in ``tmp_path/"cas"`` and its snapshots in ``tmp_path``.
"""

from __future__ import annotations

from pathlib import Path

from artifactfs.sources import SourceSettings, parse_source
from artifactfs.sources.counters import FetchCounters
from artifactfs.sources.credentials import CredentialProvider
from artifactfs.sources.git.remote import GitRemote
from artifactfs.sources.git.spec import GitSourceSpec


def settings_for(
    tmp_path: Path,
    ref: str | None = None,
    credentials: CredentialProvider | None = None,
    io_timeout: float = 60.0,
) -> SourceSettings:
    """What a mount would give a source; no token unless ``credentials`` has one."""
    return SourceSettings(
        ref=ref,
        cas_dir=tmp_path / "cas",
        snapshots_dir=tmp_path,
        temp_dir=tmp_path,
        credentials=credentials or CredentialProvider.none(),
        counters=FetchCounters(),
        io_timeout=io_timeout,
    )


def git_remote(
    url: str,
    tmp_path: Path,
    ref: str | None = None,
    credentials: CredentialProvider | None = None,
    io_timeout: float = 60.0,
) -> GitRemote:
    spec = parse_source(url)
    assert isinstance(spec, GitSourceSpec)
    return GitRemote(spec, settings_for(tmp_path, ref, credentials, io_timeout))
