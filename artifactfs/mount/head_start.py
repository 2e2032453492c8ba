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
from ..sources.spec import GitSourceSpec

if TYPE_CHECKING:
    from ..sources.git.source import GitSource, PreparedSnapshot


class HeadStart:
    def __init__(
        self,
        spec: GitSourceSpec,
        ref: str | None,
        home: ArtifactHome,
        credentials: CredentialProvider,
    ) -> None:
        self.spec = spec
        self.ref = ref
        self.home = home
        self.credentials = credentials
        self.counters = FetchCounters()
        self.cas = ContentStore(home.cas_dir)
        self.source: Future[GitSource] = Future()
        self.first_prepare: Future[PreparedSnapshot] = Future()
        threading.Thread(target=self._run, name="artifactfs-head-start", daemon=True).start()

    def _run(self) -> None:
        try:
            from ..sources.git.source import GitSource

            temp_dir = self.home.root / "tmp"
            temp_dir.mkdir(exist_ok=True)
            source = GitSource(self.spec, self.ref, temp_dir, self.counters, self.credentials)
            self.source.set_result(source)
            self.first_prepare.set_result(source.prepare(self.home.snapshots_dir, self.cas))
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits for the result
            if not self.source.done():
                self.source.set_exception(exc)
            self.first_prepare.set_exception(exc)
