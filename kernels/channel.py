"""Messages between the trusted evaluator and a worker process, over two pipes.

A message is an 8-byte length, a JSON header, then raw byte blobs whose sizes the header
lists. Nothing is ever unpickled, so a worker that runs a candidate can only send claims
that the evaluator then checks; it cannot run code in the evaluator. Tensors travel as
their raw bytes and are rebuilt with the dtype and shape the evaluator expects.
"""

from __future__ import annotations

import json
import os
import select
import struct
import time
from typing import Any

import torch

MAX_HEADER = 1 << 20
_LEN = struct.Struct("<Q")


class ChannelError(Exception):
    """The other side broke the protocol (garbled), closed the pipe or missed its deadline."""

    def __init__(self, message: str, garbled: bool = False):
        super().__init__(message)
        self.garbled = garbled


def send(fd: int, header: dict[str, Any], blobs: list[bytes] = ()) -> None:
    head = json.dumps({**header, "_blobs": [len(b) for b in blobs]}).encode()
    _write_all(fd, _LEN.pack(len(head)) + head)
    for blob in blobs:
        _write_all(fd, blob)


def recv(fd: int, timeout: float | None = None, max_bytes: int = 1 << 34) -> tuple[dict[str, Any], list[bytes]]:
    """One message; ChannelError on EOF, timeout, or anything malformed."""
    deadline = None if timeout is None else time.monotonic() + timeout
    (size,) = _LEN.unpack(_read_exact(fd, _LEN.size, deadline))
    if size > MAX_HEADER:
        raise ChannelError(f"message header of {size} bytes (limit {MAX_HEADER})", garbled=True)
    try:
        header = json.loads(_read_exact(fd, size, deadline))
    except ValueError as exc:
        raise ChannelError(f"message header is not JSON: {exc}", garbled=True) from None
    sizes = header.pop("_blobs", None) if isinstance(header, dict) else None
    if not isinstance(sizes, list) or not all(isinstance(n, int) and n >= 0 for n in sizes):
        raise ChannelError("malformed message header", garbled=True)
    if sum(sizes) > max_bytes:
        raise ChannelError(f"message of {sum(sizes)} bytes (limit {max_bytes})", garbled=True)
    return header, [_read_exact(fd, n, deadline) for n in sizes]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise ChannelError("timed out waiting for the worker")
        chunk = os.read(fd, min(n - got, 1 << 24))
        if not chunk:
            raise ChannelError("the worker closed its channel (it crashed or exited)")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def tensor_bytes(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().reshape(-1).cpu().view(torch.uint8).numpy().tobytes()


def tensor_from(blob: bytes, dtype: torch.dtype, shape: tuple[int, ...], device: str) -> torch.Tensor:
    """Rebuild a tensor the evaluator expects; a blob of the wrong size is a protocol error."""
    numel = 1
    for d in shape:
        numel *= d
    want = numel * torch.empty((), dtype=dtype).element_size()
    if len(blob) != want:
        raise ChannelError(f"expected {want} bytes for a {dtype} tensor of shape {tuple(shape)}, got {len(blob)}",
                           garbled=True)
    if want == 0:
        return torch.empty(shape, dtype=dtype, device=device)
    return torch.frombuffer(bytearray(blob), dtype=torch.uint8).view(dtype).reshape(shape).to(device)
