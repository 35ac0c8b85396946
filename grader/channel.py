"""Framed messages over a stream socket: a JSON header and raw byte buffers, never pickle.

One frame is ``u64 header length | header (UTF-8 JSON object) | u32 buffer count |
(u64 length | bytes) per buffer``. Sizes are checked before anything is allocated, so a
peer cannot make the reader hold more than ``MAX_BYTES``. Used between the grader's
workers and their examiners, and between workers and the parent process.
"""

from __future__ import annotations

import json
import socket
import struct
import weakref

MAX_HEADER = 64 << 20
_BROKEN: "weakref.WeakSet[socket.socket]" = weakref.WeakSet()  # sockets a bad frame put out of step
MAX_BUFFERS = 100_000
MAX_BYTES = (1 << 30) + (64 << 20)


class ChannelError(Exception):
    """A frame that is malformed or too large. The stream is then out of step (the rest of the
    frame is still unread): the only safe thing is to close the socket and never read it again,
    which :func:`recv` does itself."""


def _dumps(header: dict) -> bytes:
    return json.dumps(header, allow_nan=False, separators=(",", ":")).encode("utf-8")


def send(sock: socket.socket, header: dict, buffers=()) -> None:
    head = _dumps(header)
    parts = [struct.pack(">Q", len(head)), head, struct.pack(">I", len(buffers))]
    for b in buffers:
        view = memoryview(b).cast("B")
        parts += [struct.pack(">Q", view.nbytes), view]
    sock.sendall(b"".join(parts))


def _exactly(sock: socket.socket, n: int) -> bytearray:
    data = bytearray(n)
    view = memoryview(data)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise EOFError("the other side closed the channel")
        got += k
    return data


def recv(sock: socket.socket) -> tuple[dict, list]:
    """One frame: ``(header, buffers)``. EOFError when the peer closed the channel; on a bad
    frame, ChannelError with the socket already shut down (no later read can land mid-frame)."""
    if sock in _BROKEN:
        raise ChannelError("this channel broke earlier and is never read again")
    try:
        return _recv(sock)
    except ChannelError:
        _BROKEN.add(sock)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        raise


def check(header: dict, buffers) -> str:
    """Why ``(header, buffers)`` must not be sent on (too many buffers, too many bytes, a header
    too large), or ""."""
    if len(buffers) > MAX_BUFFERS:
        return f"{len(buffers)} buffers in one message (limit {MAX_BUFFERS})"
    total = sum(memoryview(b).nbytes for b in buffers)
    if total > MAX_BYTES:
        return f"{total} bytes in one message (limit {MAX_BYTES})"
    try:
        size = len(_dumps(header))
    except (TypeError, ValueError) as e:
        return f"a header that is not strict JSON ({e})"
    if size > MAX_HEADER:
        return f"a header of {size} bytes (limit {MAX_HEADER})"
    return ""


def _recv(sock: socket.socket) -> tuple[dict, list]:
    (size,) = struct.unpack(">Q", _exactly(sock, 8))
    if size > MAX_HEADER:
        raise ChannelError(f"a header of {size} bytes (limit {MAX_HEADER})")
    try:
        header = json.loads(bytes(_exactly(sock, size)))
    except RecursionError:
        raise ChannelError("a header nested too deeply") from None
    except ValueError as e:
        raise ChannelError(f"a header that is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise ChannelError("a header that is not a JSON object")
    (count,) = struct.unpack(">I", _exactly(sock, 4))
    if count > MAX_BUFFERS:
        raise ChannelError(f"{count} buffers in one frame")
    buffers, total = [], 0
    for _ in range(count):
        (n,) = struct.unpack(">Q", _exactly(sock, 8))
        total += n
        if total > MAX_BYTES:
            raise ChannelError("a frame larger than the limit")
        buffers.append(_exactly(sock, n))
    return header, buffers
