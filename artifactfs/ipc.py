"""The wire format between the CLI, the daemon and mount workers: JSON, one object per line,
over unix sockets that only their owner can open.

A request is one line; the answer is zero or more progress lines (``{"progress": ...}``) and a
final line with ``"ok"``: ``{"ok": true, ...}`` or ``{"ok": false, "error": "<one line>"}``.
A watch stream is a sequence of lines until either side closes.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the CLI's blocking client must not pay for importing trio
    import trio

MAX_LINE = 1 << 20

Message = dict[str, Any]


class ProtocolError(Exception):
    """The other side sent something that is not one JSON object per line."""


def encode(message: Message) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> Message:
    try:
        message = json.loads(line)
    except ValueError as exc:
        raise ProtocolError(f"not JSON: {line[:80]!r}") from exc
    if not isinstance(message, dict):
        raise ProtocolError(f"not a JSON object: {line[:80]!r}")
    return message


class LineStream:
    """JSON lines over a trio stream."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._buffer = bytearray()

    async def send(self, message: Message) -> None:
        await self.stream.send_all(encode(message))

    async def receive(self) -> Message | None:
        """The next message, or None at end of stream."""
        while b"\n" not in self._buffer:
            if len(self._buffer) > MAX_LINE:
                raise ProtocolError("line too long")
            data = await self.stream.receive_some(65536)
            if not data:
                if self._buffer:
                    raise ProtocolError("stream ended inside a line")
                return None
            self._buffer += data
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        return decode(line)

    async def __aiter__(self) -> AsyncIterator[Message]:
        while (message := await self.receive()) is not None:
            yield message


@contextlib.contextmanager
def _addressable(path: str) -> Iterator[str]:
    """``path``, or an equivalent short enough for a socket address (108 bytes at most): a
    long path is reached through /proc/self/fd of its directory."""
    if len(os.fsencode(path)) < 100:
        yield path
        return
    directory = os.open(os.path.dirname(path) or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{directory}/{os.path.basename(path)}"
    finally:
        os.close(directory)


async def open_unix_stream(path: str) -> LineStream:
    import trio

    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with _addressable(path) as address:
            await sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return LineStream(trio.SocketStream(sock))


async def unix_listener(path: str) -> trio.SocketListener:
    """A listening unix socket at ``path`` that only its owner may use (a stale socket file
    left there by a dead process is replaced)."""

    import trio

    def clear() -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    await trio.to_thread.run_sync(clear)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with _addressable(path) as address:
            await sock.bind(address)
        await trio.to_thread.run_sync(os.chmod, path, 0o600)
        sock.listen(64)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)


def request_blocking(
    path: str, message: Message, timeout: float | None = None
) -> Iterator[Message]:
    """For the CLI: send one request, yield every line of the answer (blocking)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        with _addressable(path) as address:
            sock.connect(address)
        sock.sendall(encode(message))
        buffer = b""
        while True:
            while b"\n" in buffer:
                line, _, buffer = buffer.partition(b"\n")
                yield decode(line)
            data = sock.recv(65536)
            if not data:
                if buffer:
                    raise ProtocolError("answer ended inside a line")
                return
            buffer += data
            if len(buffer) > MAX_LINE:
                raise ProtocolError("line too long")
