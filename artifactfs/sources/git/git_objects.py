"""Objects in a git directory: the promisor pack of a commit and its trees, and loose blobs.

- ``install_promisor_pack``: a pack as prepare received it (kept beside the snapshot) becomes
  ``objects/pack/pack-<checksum>.pack`` (a hard link when the file system allows, else a
  copy), its ``.promisor`` marker (git may fetch whatever its objects refer to and it lacks:
  the blobs) and its ``.idx``, last, since git finds packs by their index. The index is built
  by dulwich from the pack's contents (every object hashed, deltas resolved), so each id in it
  is the hash of the object it names; the pack's own checksum is verified first, and the pack
  must hold the commit.
- ``pack_commits``: the commits of a pack and their parents, read from the objects themselves
  (every id hashed): what ``shallow`` is computed from for ``--depth`` (``shallow_boundary``).
- ``write_loose_blob``: a blob's bytes (a verified CAS file) as a loose object, hashed while
  written and renamed into place only if the hash is the id asked for.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import zlib
from pathlib import Path

from dulwich.object_format import get_object_format
from dulwich.objects import Commit, ObjectID
from dulwich.pack import PackData, load_pack_index

from ...errors import SourceError
from .packs import iter_objects, object_id

_CHUNK = 1 << 20


class MissingCommit(SourceError):
    """A kept pack that does not hold the commit it was kept for."""


def install_promisor_pack(kept: Path, pack_dir: Path, object_format: str, commit: str) -> str:
    """Put the kept pack ``kept`` into ``pack_dir`` as a promisor pack holding ``commit``;
    return its name (``pack-<hex>``). Nothing is done if it is there already."""
    fmt = get_object_format(object_format)
    data = PackData(str(kept), fmt)
    try:
        data.check()  # the trailing checksum: the bytes are those the server sent
        name = f"pack-{data.get_stored_checksum().hex()}"
        index = pack_dir / f"{name}.idx"
        if index.exists():
            return name
        pack = pack_dir / f"{name}.pack"
        if not pack.exists():
            _link_or_copy(kept, pack)
        temp_index = pack_dir / f"tmp_idx_{secrets.token_hex(6)}"
        try:
            data.create_index_v2(str(temp_index))
            found = load_pack_index(str(temp_index), fmt)
            try:
                if ObjectID(commit.encode("ascii")) not in found:
                    raise MissingCommit(f"the pack kept for {commit} does not hold that commit")
            finally:
                found.close()
            promisor = pack_dir / f"{name}.promisor"
            promisor.write_bytes(b"")
            _fsync(temp_index)
            os.chmod(temp_index, 0o444)
            os.rename(temp_index, index)
        finally:
            with contextlib.suppress(FileNotFoundError):
                temp_index.unlink()
    finally:
        data.close()
    return name


def pack_commits(path: Path, object_format: str) -> dict[str, list[str]]:
    """Every commit in the pack at ``path`` (its id hashed from its bytes) with its parents.
    Raises SourceError on a malformed pack."""
    commits: dict[str, list[str]] = {}
    with open(path, "rb") as pack:
        for obj in iter_objects(pack, object_format):
            if isinstance(obj, Commit):
                parents = [parent.decode("ascii") for parent in obj.parents]
                commits[object_id(obj, object_format)] = parents
    return commits


def shallow_boundary(commits: dict[str, list[str]]) -> list[str]:
    """The commits whose parents are not all among ``commits`` (sorted): what ``shallow``
    lists, so that git stops there instead of asking for what is not here."""
    return sorted(c for c, parents in commits.items() if any(p not in commits for p in parents))


def complete_commits(commits: dict[str, list[str]]) -> set[str]:
    """The commits whose parents are all among ``commits`` (a root commit too)."""
    return {c for c, parents in commits.items() if all(p in commits for p in parents)}


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
        return
    except FileExistsError:
        return
    except OSError:
        pass  # another file system, or no hard links: copy
    temp = target.with_name(f"tmp_pack_{secrets.token_hex(6)}")
    try:
        shutil.copyfile(source, temp)
        _fsync(temp)
        os.chmod(temp, 0o444)
        os.rename(temp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def loose_object_path(objects_dir: Path, oid: str) -> Path:
    return objects_dir / oid[:2] / oid[2:]


def write_loose_blob(objects_dir: Path, oid: str, object_format: str, content: Path) -> bool:
    """Store ``content``'s bytes as the loose blob ``oid``; False if it was there already.
    Raises ValueError if the bytes do not hash to ``oid`` (nothing is written then)."""
    if len(oid) not in (40, 64) or any(c not in "0123456789abcdef" for c in oid):
        raise ValueError(f"not an object id: {oid[:80]!r}")
    final = loose_object_path(objects_dir, oid)
    if final.exists():
        return False
    final.parent.mkdir(exist_ok=True)
    temp = final.parent / f"tmp_obj_{secrets.token_hex(6)}"
    hasher = hashlib.sha1() if object_format == "sha1" else hashlib.sha256()
    compressor = zlib.compressobj(1)
    try:
        with open(content, "rb") as source, open(temp, "xb") as out:
            size = os.fstat(source.fileno()).st_size
            header = b"blob %d\0" % size
            hasher.update(header)
            out.write(compressor.compress(header))
            read = 0
            while chunk := source.read(_CHUNK):
                read += len(chunk)
                hasher.update(chunk)
                out.write(compressor.compress(chunk))
            out.write(compressor.flush())
            if read != size or hasher.hexdigest() != oid:
                raise ValueError(f"the bytes of {content} are not blob {oid}")
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp, 0o444)
        try:
            os.link(temp, final)  # as git does: never replaces an object that is there
        except FileExistsError:
            return False
        except OSError:
            os.rename(temp, final)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
