"""The Hugging Face Hub source: the file list through huggingface_hub, bytes by HTTP Range.

Only the spec is imported here; the source itself (and huggingface_hub) when a mount opens it.
"""

from __future__ import annotations

from ..base import CacheExport, CacheExportReport, Source, SourceKind, SourceSettings, SourceSpec
from .spec import HubSourceSpec, parse_hub_source


def _open(spec: SourceSpec, settings: SourceSettings) -> Source:
    from .source import HubSource

    assert isinstance(spec, HubSourceSpec)
    return HubSource(spec, settings)


def _export_cache(spec: SourceSpec, request: CacheExport) -> CacheExportReport:
    from .hf_cache import export

    assert isinstance(spec, HubSourceSpec)
    return export(spec, request)


def _preload() -> None:
    import httpx2  # noqa: F401 - the HTTP client of ranged reads

    from . import content, source  # noqa: F401


KIND = SourceKind(
    "hub",
    parse_hub_source,
    _open,
    _preload,
    "hf://org/name[@revision]",
    writable_by_default=False,  # models and data sets are read; --writable makes a workspace
    export_cache=_export_cache,  # artifactfs export-hf-cache
)

__all__ = ["KIND", "HubSourceSpec"]
