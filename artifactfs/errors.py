"""Errors every layer may raise, each meant for a person: one line, never a credential.

Layers below ``fs/`` speak these domain errors; only ``fs/`` turns them into errno (``fs/gated.py``,
``ERRNO_OF``), and only the CLI turns a ``UserError`` into an exit status.

- ``UserError``: bad input or an unusable environment. The CLI prints it as one line, without
  a traceback, and exits non-zero. Anything else reaching the top of the CLI is a bug.
- ``SourceError``: the origin could not give us what we asked for (down, refused, unknown ref,
  bad data). A failed prepare shows its message as the reason.
- ``ReadError`` and its kinds: a read of an entry's content cannot be served.
"""

import errno


class UserError(Exception):
    """Bad input or an unusable environment, described in one line for the user."""


class SourceError(Exception):
    """The origin could not give us what we asked for (down, refused, unknown ref, bad data).

    The message is one line, safe to show and to log: it never contains credentials.
    """


class OriginUnreachable(SourceError):
    """The origin could not be reached at all (refused or reset connections, time-outs, server
    errors after the retries), as opposed to an answer (a refusal, an unknown ref): a shared
    tier may stand in for it with what another node fetched (tier/snapshots.py)."""


class ReadError(Exception):
    """The content of an entry cannot be served now; the message is one line for the log."""


class BlobUnavailable(ReadError):
    """The bytes could not be had: the origin failed, refused, timed out, or the mount is
    going away."""


class NoSpace(ReadError):
    """The file system of the state home is full: the bytes were had, but cannot be kept. Reads
    of what is stored already go on; freeing space makes the rest work again."""


def is_no_space(exc: BaseException | None) -> bool:
    """Whether ``exc``, or what caused it, is a full disk (ENOSPC) or quota (EDQUOT)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


class IntegrityError(ReadError):
    """The content is not what the snapshot says it is (its size or its digest differs), so
    it is refused rather than served."""
