"""Start preparing before the FUSE machinery is imported.

A new worker process spends 0.2 to 0.3 s starting Python and importing trio and pyfuse3 before
it can mount (docs/benchmarks.md, "Where add-repo --async spends its time"), and prepare spends
most of its time waiting on the origin. So the source is opened and the first prepare started
in a thread the moment the command line is validated, importing the source's libraries
(dulwich, huggingface_hub) and talking to the origin while the main thread imports trio and
pyfuse3 and mounts the placeholder. The prepare task then picks up the result. Nothing here
imports dulwich, trio or pyfuse3 in the calling thread.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future

from ..sources import PreparedSnapshot, Source, SourceSettings, SourceSpec, open_source


class HeadStart:
    def __init__(self, spec: SourceSpec, settings: SourceSettings) -> None:
        self.spec = spec
        self.settings = settings
        self.source: Future[Source] = Future()
        self.first_prepare: Future[PreparedSnapshot] = Future()
        threading.Thread(target=self._run, name="artifactfs-head-start", daemon=True).start()

    def _run(self) -> None:
        try:
            source = open_source(self.spec, self.settings)
            self.source.set_result(source)
            self.first_prepare.set_result(source.prepare())
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits for the result
            if not self.source.done():
                self.source.set_exception(exc)
            self.first_prepare.set_exception(exc)
