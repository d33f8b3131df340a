"""A small animated GIF, written by hand: the simulator's rendered "video".

Pure Python, no codec: an 8-bit palette and LZW codes that never grow past 9 bits (a
clear code every ``_RUN`` pixels), which every decoder (browsers included) reads. One
frame per quarter second: a square crosses the picture while a bar fills up at the
bottom, on a background coloured after the prompt.
"""

from __future__ import annotations

import hashlib
import struct

FPS = 4
WIDTH, HEIGHT = 64, 36
CONTENT_TYPE = "image/gif"

_CLEAR, _END = 256, 257
#: Pixels between clear codes: the table stays below 512 entries, so codes stay 9 bits.
_RUN = 200


def _palette(prompt: str) -> bytes:
    h = hashlib.sha256(prompt.encode()).digest()
    colours = [h[0:3], bytes((255, 255, 255)), bytes((255 - h[0], 255 - h[1], 255 - h[2]))]
    colours.append(bytes((20, 20, 20)))
    return b"".join(colours) + bytes(3 * (256 - len(colours)))


def _lzw(pixels: bytes) -> bytes:
    """The pixels as 9-bit LZW codes, packed least significant bit first."""
    out = bytearray()
    acc = bits = 0

    def put(code: int) -> None:
        nonlocal acc, bits
        acc |= code << bits
        bits += 9
        while bits >= 8:
            out.append(acc & 0xFF)
            acc >>= 8
            bits -= 8

    for i in range(0, len(pixels), _RUN):
        put(_CLEAR)
        for p in pixels[i : i + _RUN]:
            put(p)
    put(_END)
    if bits:
        out.append(acc & 0xFF)
    return bytes(out)


def _blocks(data: bytes) -> bytes:
    parts = [bytes((len(data[i : i + 255]),)) + data[i : i + 255] for i in range(0, len(data), 255)]
    return b"".join(parts) + b"\x00"


def _frame(n: int, total: int) -> bytes:
    """Pixels of frame ``n`` of ``total``: indexes into the palette."""
    px = bytearray(WIDTH * HEIGHT)  # background (0)
    side = 10
    x0 = (WIDTH - side) * n // max(total - 1, 1)
    y0 = (HEIGHT - 6 - side) // 2
    for y in range(y0, y0 + side):
        px[y * WIDTH + x0 : y * WIDTH + x0 + side] = bytes((1,)) * side
    filled = WIDTH * (n + 1) // total
    for y in range(HEIGHT - 4, HEIGHT):
        px[y * WIDTH : y * WIDTH + WIDTH] = bytes((3,)) * WIDTH
        px[y * WIDTH : y * WIDTH + filled] = bytes((2,)) * filled
    return bytes(px)


def render_gif(prompt: str, seconds: int) -> bytes:
    """An animated GIF of ``seconds`` at ``FPS`` frames a second, looping."""
    total = max(1, seconds * FPS)
    head = b"GIF89a" + struct.pack("<HHBBB", WIDTH, HEIGHT, 0xF7, 0, 0) + _palette(prompt)
    loop = b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"
    frames = []
    for n in range(total):
        control = b"\x21\xf9\x04\x00" + struct.pack("<H", 100 // FPS) + b"\x00\x00"
        desc = b"\x2c" + struct.pack("<HHHHB", 0, 0, WIDTH, HEIGHT, 0)
        frames.append(control + desc + b"\x08" + _blocks(_lzw(_frame(n, total))))
    return head + loop + b"".join(frames) + b"\x3b"
