"""Start preparing before the FUSE machinery is imported.

A new worker process spends about 100 ms importing trio and pyfuse3 before it can mount, and
prepare spends most of its time waiting on the origin. So the first prepare starts in a thread
the moment the command line is validated, importing dulwich and talking to the server while
the main thread imports trio and pyfuse3 and mounts the placeholder. The prepare task then
picks up the result. Nothing here imports dulwich, trio or pyfuse3 in the calling thread.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING

from ..cas import ContentStore
from ..home import ArtifactHome
from ..sources.counters import FetchCounters
from ..sources.credentials import CredentialProvider
from ..sources.spec import GitSourceSpec, HubSourceSpec, SourceSpec

if TYPE_CHECKING:
    from ..sources.git.source import GitSource
    from ..sources.hub.source import HubSource
    from ..sources.prepared import PreparedSnapshot

    Source = GitSource | HubSource


class HeadStart:
    def __init__(
        self,
        spec: SourceSpec,
        ref: str | None,
        home: ArtifactHome,
        credentials: CredentialProvider,
        hub_token: str | None = None,
    ) -> None:
        """``hub_token``: a token given on purpose for a Hub source (else HF_TOKEN and the
        token file of ``hf auth login`` apply, as in huggingface_hub)."""
        self.spec = spec
        self.ref = ref
        self.home = home
        self.credentials = credentials
        self.hub_token = hub_token
        self.counters = FetchCounters()
        self.cas = ContentStore(home.cas_dir)
        self.source: Future[Source] = Future()
        self.first_prepare: Future[PreparedSnapshot] = Future()
        threading.Thread(target=self._run, name="artifactfs-head-start", daemon=True).start()

    def _run(self) -> None:
        try:
            source = self._source()
            self.source.set_result(source)
            self.first_prepare.set_result(source.prepare(self.home.snapshots_dir, self.cas))
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits for the result
            if not self.source.done():
                self.source.set_exception(exc)
            self.first_prepare.set_exception(exc)

    def _source(self) -> Source:
        if isinstance(self.spec, HubSourceSpec):
            from ..sources.hub.source import HubSource, hub_token

            return HubSource(self.spec, self.counters, token=self.hub_token or hub_token())
        from ..sources.git.source import GitSource

        assert isinstance(self.spec, GitSourceSpec)
        temp_dir = self.home.root / "tmp"
        temp_dir.mkdir(exist_ok=True)
        return GitSource(self.spec, self.ref, temp_dir, self.counters, self.credentials)
