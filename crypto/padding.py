"""Padmé padding (PURBs), and the in-format padding of clips (MP4 `free` box) and posters (JPEG
`COM` segments), so that the bucket operator learns only a coarse size. See
docs/clip-format.md §4-6.
"""

from __future__ import annotations

import struct

FREE_BOX_MIN = 8
JPEG_COM_MIN = 4  # FF FE + 2-byte length
JPEG_COM_MAX = 2 + 0xFFFF  # the length field counts itself, not the marker


def padme(length: int) -> int:
    """Round `length` up to a Padmé size: keep the top floor(log2 E)+1 bits of the exponent's
    worth of mantissa (E = floor(log2 length)); overhead < 12%, O(log log L) bits leak."""
    if length < 0:
        raise ValueError("negative length")
    if length < 2:
        return length
    e = length.bit_length() - 1  # floor(log2 L)
    s = e.bit_length()  # floor(log2 E) + 1
    mask = (1 << (e - s)) - 1
    return (length + mask) & ~mask


def padded_size(length: int, granularity: int = 1) -> int:
    """Padmé after rounding up to a multiple of `granularity` (manifest objects use 1 KiB so
    that small objects do not leak their exact length either)."""
    return padme(-(-length // granularity) * granularity)


def _target(length: int, min_pad: int) -> int:
    target = padme(length)
    while 0 < target - length < min_pad:  # no room for the smallest filler: next Padmé size
        target = padme(target + 1)
    return target - length


def mp4_padding(length: int) -> int:
    """Size of the `free` box that brings an MP4 of `length` bytes to a Padmé size: 0 (already
    there) or at least 8."""
    return _target(length, FREE_BOX_MIN)


def free_box_header(padding: int) -> bytes:
    """The header of a `free` box of `padding` bytes (>= 8); the 64-bit size form from 2^32."""
    if padding < FREE_BOX_MIN:
        raise ValueError(f"a free box is at least {FREE_BOX_MIN} bytes, not {padding}")
    if padding <= 0xFFFFFFFF:
        return struct.pack(">I4s", padding, b"free")
    return struct.pack(">I4sQ", 1, b"free", padding)


def mp4_free_box(padding: int) -> bytes:
    """An ISO BMFF `free` box of exactly `padding` bytes (>= 8), zero-filled; no box for 0
    (what mp4_padding returns for a length that already is a Padmé size)."""
    if padding == 0:
        return b""
    header = free_box_header(padding)
    return header + bytes(padding - len(header))


def pad_mp4(mp4: bytes | bytearray) -> bytes:
    """`mp4` with a trailing `free` box to a Padmé size (in-memory; the recorder streams its
    fragments and appends `mp4_free_box(mp4_padding(total))` itself)."""
    pad = mp4_padding(len(mp4))
    return bytes(mp4) + (mp4_free_box(pad) if pad else b"")


def jpeg_padding(length: int) -> int:
    """Bytes of `COM` segments that bring a JPEG of `length` bytes to a Padmé size: 0 or >= 4."""
    return _target(length, JPEG_COM_MIN)


def jpeg_comments(padding: int) -> bytes:
    """Zero-filled JPEG comment segments totalling exactly `padding` bytes (>= 4)."""
    if padding < JPEG_COM_MIN:
        raise ValueError(f"JPEG padding is at least {JPEG_COM_MIN} bytes, not {padding}")
    count = -(-padding // JPEG_COM_MAX)
    base, extra = divmod(padding, count)  # near-equal segments, each >= 4 bytes
    out = bytearray()
    for i in range(count):
        size = base + (1 if i < extra else 0)
        out += b"\xff\xfe" + (size - 2).to_bytes(2, "big") + bytes(size - 4)
    return bytes(out)


def pad_jpeg(jpeg: bytes | bytearray) -> bytes:
    """`jpeg` with comment segments after SOI, to a Padmé size; still a valid JPEG."""
    if jpeg[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG (no SOI marker)")
    pad = jpeg_padding(len(jpeg))
    if not pad:
        return bytes(jpeg)
    return bytes(jpeg[:2]) + jpeg_comments(pad) + bytes(jpeg[2:])

