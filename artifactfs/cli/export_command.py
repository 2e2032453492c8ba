"""``artifactfs export-hf-cache NAME [--cache-dir DIR]``: write a Hub repository's files into
huggingface_hub's cache, so that ``from_pretrained(..., local_files_only=True)`` (or
``hf_hub_download``) finds them without a download.

The files not in the CAS yet are fetched first, by the repository's worker (as ``prefetch``
does, verified like any read); then the source's kind writes the layout (``SourceKind.
export_cache``; the Hub's is sources/hub/hf_cache.py): blobs copied from the CAS (reflink where
the file systems allow), each written to a temporary, synced, verified and renamed into place,
then the snapshot's links, then the ref.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..cas.eviction import format_size
from ..errors import UserError

EXIT_SOME_FAILED = 1


def add_parser(commands: Any) -> None:
    export = commands.add_parser(
        "export-hf-cache",
        help="write a Hugging Face repository's files into huggingface_hub's cache",
        description="Write the files of NAME (an hf:// repository registered with the daemon) "
        "into huggingface_hub's cache, so that from_pretrained(..., local_files_only=True) and "
        "hf_hub_download find them without a download. Files not stored yet are fetched "
        "first, through NAME's worker. The cache is HF_HUB_CACHE, else $HF_HOME/hub, else "
        "~/.cache/huggingface/hub, as huggingface_hub finds it.",
    )
    export.add_argument("name", metavar="NAME")
    export.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="the huggingface_hub cache to write (huggingface_hub's cache_dir=)",
    )
    export.set_defaults(run=export_command)


def export_command(args: argparse.Namespace) -> int:
    from ..cas.digests import digest_of
    from ..cas.store import ContentStore
    from ..sources import parse_source
    from ..sources.base import CacheExport
    from ..sources.registry import kind_of
    from .cache_command import _files_under
    from .prefetch_command import check_mounted, fetch_by_worker, read_through
    from .repositories import home as state_home
    from .repositories import known

    home = state_home()
    repo = known(home, args.name)
    spec = parse_source(repo.source).with_ref(repo.ref)
    export = kind_of(spec).export_cache
    if export is None:
        raise UserError(
            f"{args.name} is not a Hugging Face repository ({spec.display}): only hf:// "
            "repositories have a huggingface_hub cache to export to"
        )
    if repo.snapshot is None:
        raise UserError(f"{args.name} is not prepared yet ({repo.state}): export it once ready")
    target = Path(args.cache_dir).expanduser() if args.cache_dir else None
    if target is not None and target.exists() and not target.is_dir():
        raise UserError(f"--cache-dir {args.cache_dir}: not a directory")
    files = dict(_files_under(repo.snapshot, [""], args.name))
    store = ContentStore(home.cas_dir)
    missing = [  # (empty files are in no store: their content is known)
        path
        for path, digest in files.items()
        if digest != digest_of(digest.algorithm, b"") and not store.contains(digest)
    ]
    progress = sys.stderr.isatty()
    if missing:
        mountpoint = Path(repo.mountpoint)
        try:
            check_mounted(mountpoint, args.name)
        except UserError as exc:
            raise UserError(
                f"{len(missing)} file(s) of {args.name} are not stored: {exc}"
            ) from None
        if fetch_by_worker(home, args.name, missing, progress) is None:
            read_through(mountpoint, missing, progress, walk=False)
    try:
        report = export(spec, CacheExport(repo.snapshot, home.cas_dir, target))
    except PermissionError as exc:
        raise UserError(f"cannot write the huggingface_hub cache: {exc}") from None
    except OSError as exc:
        print(f"artifactfs: cannot write the huggingface_hub cache: {exc}", file=sys.stderr)
        return EXIT_SOME_FAILED
    how = ", ".join(f"{count} by {way}" for way, count in sorted(report.how.items()))
    print(
        f"exported {report.files - len(report.missing) - len(report.failed)} file(s) of "
        f"{args.name} ({format_size(report.bytes)}) to {report.folder} at {report.commit}"
        + (f" as {report.ref}" if report.ref else "")
        + f": {report.written} written" + (f" ({how})" if how else "")
        + f", {report.present} there already"
    )  # fmt: skip
    if report.ref_kept:
        print(
            f"artifactfs: {report.folder.name}'s ref already names {report.ref_kept}: left as it"
            f" is (load this export with revision={report.commit!r})",
            file=sys.stderr,
        )
    for path in report.missing:
        print(f"artifactfs: {path}: not stored (the mount's log says why)", file=sys.stderr)
    for line in report.failed:
        print(f"artifactfs: {line}", file=sys.stderr)
    return EXIT_SOME_FAILED if report.missing or report.failed else 0
