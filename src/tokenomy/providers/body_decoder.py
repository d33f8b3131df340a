"""Decoding a compressed response body (``Content-Encoding: gzip`` or ``deflate``) as it
arrives."""

from __future__ import annotations

import zlib


class BodyDecoder:
    """A compressed body's decoder. ``deflate`` is zlib-wrapped by the RFC, raw deflate
    from some servers: told apart by the first two bytes (a zlib header names method 8 and
    is a multiple of 31). A body that ends before its compressed stream does is an error,
    not a shorter answer."""

    def __init__(self, gzip: bool) -> None:
        self._inner = zlib.decompressobj(16 + zlib.MAX_WBITS) if gzip else None
        self._head = b""
        self._fed = False

    def decompress(self, data: bytes) -> bytes:
        self._fed = self._fed or bool(data)
        if self._inner is None:
            self._head += data
            if len(self._head) < 2:
                return b""
            cmf, flg = self._head[0], self._head[1]
            wrapped = cmf & 0x0F == 8 and (cmf << 8 | flg) % 31 == 0
            self._inner = zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
            data, self._head = self._head, b""
        return self._inner.decompress(data)

    def finish(self) -> bytes:
        """What is left once the body has ended; zlib.error if the stream had not."""
        if not self._fed:
            return b""  # an empty body (a 204, say) is not a truncated one
        inner = self._inner
        if inner is None:
            raise zlib.error("a compressed body of one byte")
        tail = inner.flush()
        if not inner.eof:
            raise zlib.error("the compressed body stopped before its end")
        return tail
