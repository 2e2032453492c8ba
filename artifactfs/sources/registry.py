"""The kinds of source there are, and how a SOURCE finds its kind.

Each kind parses its own syntax; the first that recognises the text wins, and git comes last
because it takes any local path or scp-like ``host:path``. Adding an origin is a new folder
under ``sources/`` whose ``__init__`` offers a ``SourceKind``, and one line in ``KINDS``.

Nothing here imports a kind's heavy libraries (dulwich, huggingface_hub): parsing a SOURCE
must stay cheap for the command line, and a mount imports them in its head-start thread
(``mount/head_start.py``) when ``open_source`` is called.
"""

from __future__ import annotations

from ..errors import UserError
from . import git, hub
from .base import Source, SourceKind, SourceSettings, SourceSpec
from .required import RequiredCommit
from .spec import URL_SCHEME, check_source_text, redact_url

KINDS: tuple[SourceKind, ...] = (hub.KIND, git.KIND)


def parse_source(text: str) -> SourceSpec:
    """Validate a SOURCE argument; raise ``UserError`` with one line if it is unusable."""
    check_source_text(text)
    for kind in KINDS:
        spec = kind.parse(text)
        if spec is not None:
            return spec
    match = URL_SCHEME.match(text)
    scheme = f"{match['scheme'].lower()}://" if match else text
    kinds = "; ".join(kind.syntax for kind in KINDS if kind.syntax)
    raise UserError(f"unsupported source scheme {scheme!r} in {redact_url(text)!r} (use {kinds})")


def kind_of(spec: SourceSpec) -> SourceKind:
    """The kind that parsed ``spec``."""
    for kind in KINDS:
        if kind.name == spec.kind:
            return kind
    raise ValueError(f"no source kind named {spec.kind!r}")


def open_source(spec: SourceSpec, settings: SourceSettings) -> Source:
    """The source ``spec`` describes, opened with ``settings`` (blocking: imports its kind's
    libraries)."""
    source = kind_of(spec).open(spec, settings)
    if settings.require_commit is None:
        return source
    return RequiredCommit(source, settings.require_commit, settings.ref)


def preload() -> None:
    """Import every kind's libraries now, so that opening a source later costs no import."""
    for kind in KINDS:
        kind.preload()
