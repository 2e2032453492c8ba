"""Fetch byte ranges of Hub files over HTTP, coping with what real servers and CDNs do.

Async (httpx2 on trio), so a cancelled read does not leave a thread behind. One ``fetch``
delivers the bytes of ``[start, end)`` in order to a callback, and copes with:

- 429 with ``Retry-After`` (wait that long, capped) and 5xx (bounded retries with backoff);
- a connection cut mid-body: the next attempt asks for the rest, from the last byte received;
- a server that ignores ``Range`` and answers 200: the whole body is delivered from offset 0
  (the caller keeps what it gets; nothing is misplaced);
- headers that do not fit: a ``Content-Range`` for other bytes or another total size is refused.

401/403/404 are not retried: they are answers, and become one line.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from urllib.parse import quote

import trio

from ...errors import SourceError
from ..counters import FetchCounters
from .refusals import RETRYABLE, describe_exception, describe_status
from .spec import HubSourceSpec

log = logging.getLogger(__name__)

ATTEMPTS = 6
MAX_RETRY_AFTER = 30.0
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")

Deliver = Callable[[int, bytes], Awaitable[None]]
"""Called with (offset, bytes) in order; it may be handed more than it asked for."""


def file_url(endpoint: str, spec: HubSourceSpec, commit: str, path: str) -> str:
    """Where the Hub serves the bytes of ``path`` at ``commit`` (LFS files redirect on)."""
    return f"{endpoint.rstrip('/')}/{spec.path_prefix}{spec.repo_id}/resolve/{commit}/{quote(path)}"


class HubClient:
    def __init__(
        self,
        endpoint: str,
        token: str | None,
        io_timeout: float,
        user_agent: str,
        counters: FetchCounters,
    ) -> None:
        import httpx2

        _read_more_per_call()
        headers = {"User-Agent": user_agent}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._client = httpx2.AsyncClient(
            headers=headers,
            follow_redirects=True,  # LFS files live behind a redirect to a CDN
            timeout=httpx2.Timeout(io_timeout),
        )
        self.endpoint = endpoint.rstrip("/")
        self.counters = counters

    async def aclose(self) -> None:
        await self._client.aclose()

    async def fetch(self, url: str, start: int, end: int, total: int, deliver: Deliver) -> None:
        """Deliver the bytes ``[start, end)`` of a file of ``total`` bytes (raises SourceError)."""
        import httpx2

        position = start
        what = url.rsplit("/resolve/", 1)[-1]
        for attempt in range(ATTEMPTS):
            if position >= end:
                return
            try:
                position = await self._attempt(url, position, end, total, deliver, what)
                continue
            except _Retry as retry:
                if attempt == ATTEMPTS - 1:
                    raise SourceError(retry.reason) from None
                log.info("%s; retrying in %.1f s", retry.reason, retry.delay)
                await trio.sleep(retry.delay)
                position = max(position, retry.position)
            except httpx2.TransportError as exc:
                if attempt == ATTEMPTS - 1:
                    raise SourceError(describe_exception(exc, what)) from None
                log.info("%s; retrying", describe_exception(exc, what))
                await trio.sleep(min(0.25 * 2**attempt, 4.0))
        if position < end:
            raise SourceError(f"{what}: gave up after {ATTEMPTS} attempts")

    async def _attempt(
        self, url: str, start: int, end: int, total: int, deliver: Deliver, what: str
    ) -> int:
        """One request; returns how far we got. Raises _Retry for what deserves another try."""
        import httpx2

        headers = {"Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity"}
        position = start
        async with self._client.stream("GET", url, headers=headers) as response:
            status = response.status_code
            if status in RETRYABLE:
                reason = describe_status(status, what)
                raise _Retry(reason, _retry_after(response.headers, status), start)
            if status == 200:
                length = response.headers.get("Content-Length")
                if length is not None and length.isdigit() and int(length) != total:
                    raise SourceError(f"{what}: the server sent {length} bytes, not {total}")
                position = 0  # the server ignored Range: the whole body, from the start
            elif status == 206:
                first, last, size = _content_range(response.headers.get("Content-Range"), what)
                if first != start or last >= end or last < first or size != total:
                    raise SourceError(f"{what}: the server sent bytes {first}-{last}/{size}")
            else:
                raise SourceError(
                    describe_status(status, what, response.headers.get("X-Error-Code"))
                )
            try:
                async for chunk in response.aiter_raw():
                    if position + len(chunk) > total:
                        raise SourceError(f"{what}: the server sent more than {total} bytes")
                    await deliver(position, chunk)
                    position += len(chunk)
                    self.counters.add_bytes(len(chunk))
            except httpx2.TransportError as exc:  # cut mid-body: resume from here
                raise _Retry(describe_exception(exc, what), 0.0, max(position, start)) from None
        if status == 200 and position < total:
            raise _Retry(f"{what}: the body ended early", 0.0, start)
        return max(position, start) if status == 206 else total


RECEIVE_BYTES = 1 << 20
"""How much one socket read may take. httpcore2 reads 64 KiB at a time: for a 1 GiB file that
is 16,000 passes through the trio loop that also answers the kernel's reads. 256 KiB and 1 MiB
took a cold whole read of 1 GiB from 4.7 to 5.2 s down to 4.1 to 4.2 s (docs/benchmarks.md)."""


def _read_more_per_call() -> None:
    """Raise httpcore2's per-read size for HTTP/1.1 (a class attribute it reads on every
    receive; the only async HTTP client in a mount worker is ours)."""
    from httpcore2._async import http11

    connection = getattr(http11, "AsyncHTTP11Connection", None)
    if connection is not None and getattr(connection, "READ_NUM_BYTES", 0) < RECEIVE_BYTES:
        connection.READ_NUM_BYTES = RECEIVE_BYTES


class _Retry(Exception):
    def __init__(self, reason: str, delay: float, position: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = delay
        self.position = position


def _retry_after(headers: object, status: int) -> float:
    value = getattr(headers, "get", lambda _: None)("Retry-After")
    try:
        delay = float(str(value))
    except ValueError:
        delay = 1.0 if status == 429 else 0.5
    return min(max(delay, 0.0), MAX_RETRY_AFTER)


def _content_range(value: str | None, what: str) -> tuple[int, int, int]:
    match = _CONTENT_RANGE.fullmatch((value or "").strip())
    if not match:
        raise SourceError(f"{what}: a partial answer without a usable Content-Range")
    return int(match[1]), int(match[2]), int(match[3])
