"""Padmé and the in-format padding of clips (MP4 `free` box) and posters (JPEG `COM`)."""

from __future__ import annotations

import io
import math
import random
import struct
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from crypto.age import AgeWriter, X25519Identity, write_identity_file
from crypto.padding import (
    free_box_header,
    jpeg_comments,
    jpeg_padding,
    mp4_free_box,
    mp4_padding,
    pad_jpeg,
    pad_mp4,
    padded_size,
    padme,
)


def padme_reference(length: int) -> int:
    """The PURBs paper's pseudocode, with floating-point logarithms."""
    e = math.floor(math.log2(length))
    s = math.floor(math.log2(e)) + 1
    last_bits = e - s
    mask = (1 << last_bits) - 1
    return (length + mask) & ~mask


def test_padme_matches_the_paper() -> None:
    rng = random.Random(1)
    lengths = [*range(2, 5000), *(rng.randrange(5000, 1 << 40) for _ in range(5000))]
    for n in lengths:
        assert padme(n) == padme_reference(n), n
    assert [padme(n) for n in (0, 1)] == [0, 1]
    assert padme(padme(123457)) == padme(123457)  # idempotent


def test_padme_overhead_below_12_percent_everywhere() -> None:
    worst = max((padme(n) - n) / n for n in range(2, 1 << 17))
    assert worst < 0.12
    rng = random.Random(2)
    for _ in range(20000):
        n = rng.randrange(1 << 17, 1 << 36)
        assert (padme(n) - n) / n < 0.032  # E >= 16: below 2^-5


def test_padme_leaks_few_distinct_sizes() -> None:
    # 1-64 MB holds about 6.3e7 lengths; Padmé maps them onto a few hundred sizes.
    sizes = {padme(n) for n in range(1 << 20, 1 << 26, 997)}
    assert len(sizes) < 200


def test_mp4_padding_leaves_room_for_a_box_and_lands_on_padme_sizes() -> None:
    rng = random.Random(3)
    lengths = [*range(256, 20000), *(rng.randrange(20000, 1 << 32) for _ in range(20000))]
    for n in lengths:
        pad = mp4_padding(n)
        assert pad == 0 or pad >= 8, n
        assert padme(n + pad) == n + pad, n
        assert pad / n < 0.09, n  # the bound docs/clip-format.md §4 states


def test_mp4_padding_moves_on_when_the_gap_is_too_small() -> None:
    n = padme(1_000_000) - 3  # 3 bytes short of a Padmé size: no box fits
    pad = mp4_padding(n)
    assert pad > 3 and padme(n + pad) == n + pad


def test_free_box_bytes() -> None:
    assert mp4_free_box(8) == struct.pack(">I4s", 8, b"free")
    box = mp4_free_box(1000)
    assert len(box) == 1000 and box[:8] == struct.pack(">I4s", 1000, b"free")
    assert not any(box[8:])
    big = free_box_header(1 << 33)  # the 64-bit form, without allocating 8 GiB
    assert big == struct.pack(">I4sQ", 1, b"free", 1 << 33)
    assert free_box_header(0xFFFFFFFF)[:4] == b"\xff\xff\xff\xff"
    with pytest.raises(ValueError):
        mp4_free_box(7)


def test_padded_size_granularity() -> None:
    assert padded_size(1, 1024) == 1024
    assert padded_size(1024, 1024) == 1024
    assert padded_size(1025, 1024) == 2048
    for n in range(1, 70000, 37):
        p = padded_size(n, 1024)
        assert p % 1024 == 0 and p >= n and padme(p) == p


def make_fmp4(frames: int = 30, size: tuple[int, int] = (160, 120)) -> bytes:
    """A small H.264 fragmented MP4 made with PyAV, as the recorder writes it."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4",
                 options={"movflags": "frag_keyframe+empty_moov+default_base_moof"}) as out:
        stream = out.add_stream("libx264", rate=15)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"g": "15", "preset": "ultrafast"}
        rng = np.random.default_rng(0)
        for i in range(frames):
            img = np.full((size[1], size[0], 3), (i * 8) % 256, dtype=np.uint8)
            img[: size[1] // 2] = rng.integers(0, 255, (size[1] // 2, size[0], 3), dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, 15)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def decode_frames(data: bytes) -> int:
    with av.open(io.BytesIO(data), "r") as container:
        return sum(1 for _ in container.decode(video=0))


def top_level_boxes(data: bytes) -> list[str]:
    out, pos = [], 0
    while pos < len(data):
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if size == 1:
            size = struct.unpack(">Q", data[pos + 8:pos + 16])[0]
        out.append(kind.decode())
        pos += size
    assert pos == len(data)
    return out


def test_free_box_keeps_an_fmp4_playable() -> None:
    mp4 = make_fmp4()
    padded = pad_mp4(mp4)
    assert len(padded) == padme(len(padded)) and len(padded) > len(mp4)
    boxes = top_level_boxes(padded)
    assert boxes[:2] == ["ftyp", "moov"] and "moof" in boxes and boxes[-1] == "free"
    assert decode_frames(padded) == decode_frames(mp4) == 30


def test_padded_clip_through_stock_age_decodes(tmp_path: Path) -> None:
    """The recorder's path: stream fragments + free box into AgeWriter; `age -d` → PyAV."""
    identity = X25519Identity.generate()
    write_identity_file(tmp_path / "owner.key", identity)
    mp4 = make_fmp4(45)
    with open(tmp_path / "clip", "wb") as f, AgeWriter([identity.recipient], f) as w:
        for i in range(0, len(mp4), 1000):  # as fragments arrive
            w.write(mp4[i:i + 1000])
        w.write(mp4_free_box(mp4_padding(w.plaintext_size)))
    subprocess.run(
        ["age", "-d", "-i", str(tmp_path / "owner.key"), "-o", str(tmp_path / "clip.mp4"),
         str(tmp_path / "clip")], check=True,
    )
    plain = (tmp_path / "clip.mp4").read_bytes()
    assert plain[:len(mp4)] == mp4 and padme(len(plain)) == len(plain)
    assert decode_frames(plain) == 45


def test_jpeg_padding_keeps_the_image() -> None:
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=80)
    jpeg = buf.getvalue()
    padded = pad_jpeg(jpeg)
    assert len(padded) == padme(len(padded)) and len(padded) >= len(jpeg)
    with Image.open(io.BytesIO(padded)) as a, Image.open(io.BytesIO(jpeg)) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError):
        pad_jpeg(b"not a jpeg")


def test_jpeg_comments_split_large_padding() -> None:
    for pad in (4, 5, 65537, 65538, 200_000):
        com = jpeg_comments(pad)
        assert len(com) == pad
        pos = 0
        while pos < len(com):  # each segment: FF FE, length (counts itself), zeros
            assert com[pos:pos + 2] == b"\xff\xfe"
            length = int.from_bytes(com[pos + 2:pos + 4], "big")
            assert length >= 2
            pos += 2 + length
        assert pos == pad
    for n in range(1000, 100000, 101):
        p = jpeg_padding(n)
        assert p == 0 or p >= 4
        assert padme(n + p) == n + p


def test_no_box_when_already_padded() -> None:
    from crypto.padding import mp4_free_box, mp4_padding, padme

    size = padme(100_000)
    assert mp4_padding(size) == 0 and mp4_free_box(mp4_padding(size)) == b""
