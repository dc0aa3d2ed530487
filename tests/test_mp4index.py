"""The review app's MP4 index (bridge/owner/review/mp4index.py) on a fragmented MP4 written by
FFmpeg, against FFmpeg's own reading of it; and garbage never raises."""

from __future__ import annotations

import io
import random
import struct
from fractions import Fraction

import av
import numpy as np
import pytest

from bridge.owner.review.mp4index import first_decode_time, segment_index, tracks


def fragmented_mp4(seconds: float = 2.0) -> bytes:
    """H.264 + AAC, a fragment per keyframe, empty moov: the bridge's kind of file."""
    out = io.BytesIO()
    options = {"movflags": "frag_keyframe+empty_moov+default_base_moof"}
    with av.open(out, "w", format="mp4", options=options) as container:
        video = container.add_stream("libx264", rate=15, options={"g": "15"})
        video.width, video.height, video.pix_fmt = 160, 96, "yuv420p"
        audio = container.add_stream("aac", rate=16000)
        frames = int(seconds * 15)
        for i in range(frames):
            picture = np.full((96, 160, 3), (i * 7) % 255, dtype=np.uint8)
            container.mux(video.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        samples = np.zeros((1, int(seconds * 16000)), dtype=np.float32)
        sound = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        sound.sample_rate, sound.pts, sound.time_base = 16000, 0, Fraction(1, 16000)
        container.mux(audio.encode(sound))
        container.mux(video.encode())
        container.mux(audio.encode())
    return out.getvalue()


def head_length(data: bytes) -> int:
    pos = 0
    for _ in range(2):  # ftyp, moov
        pos += struct.unpack_from(">I", data, pos)[0]
    return pos


@pytest.fixture(scope="module")
def mp4() -> bytes:
    return fragmented_mp4()


def test_tracks_and_times_are_ffmpegs(mp4: bytes) -> None:
    n = head_length(mp4)
    found = {t.handler: t for t in tracks(mp4[:n])}
    assert set(found) == {b"vide", b"soun"}
    with av.open(io.BytesIO(mp4)) as container:
        for stream in container.streams:
            track = found[b"vide" if stream.type == "video" else b"soun"]
            assert (track.track_id, track.timescale) == (stream.id, stream.time_base.denominator)
            first = next(p for p in container.demux(stream) if p.dts is not None)
            assert first_decode_time(mp4, n, track.track_id) == first.dts
            container.seek(0)
    assert first_decode_time(mp4, n, 99) is None  # no such track


def test_the_index_lets_ffmpeg_start_at_the_first_fragment(mp4: bytes) -> None:
    n = head_length(mp4)
    indexed = [(t, first_decode_time(mp4, n, t.track_id) or 0, [t.timescale * 2])
               for t in tracks(mp4[:n])]  # fmt: skip
    boxes = segment_index(indexed, [len(mp4) - n])
    joined = mp4[:n] + boxes + mp4[n:]
    with av.open(io.BytesIO(joined)) as container:
        assert abs(container.duration / 1e6 - 2.0) < 0.2
        assert sum(1 for _ in container.decode(video=0)) == 30


def test_bad_references_are_refused(mp4: bytes) -> None:
    (video, *_) = tracks(mp4[: head_length(mp4)])
    for refs, sizes in (([], [10]), ([1], []), ([-1], [10]), ([1], [0]), ([1], [1 << 31])):
        with pytest.raises(ValueError):
            segment_index([(video, 0, refs)] if refs else [], sizes)


def test_garbage_never_raises(mp4: bytes) -> None:
    rng = random.Random(14)
    n = head_length(mp4)
    window = mp4[: n + 4096]
    for cut in range(0, len(window), 7):  # every truncation
        tracks(window[:cut])
        first_decode_time(window[:cut], min(n, cut), 1)
    for _ in range(2000):  # and random damage
        data = bytearray(window)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        found = tracks(bytes(data[:n]))
        for track in found:
            first_decode_time(bytes(data), n, track.track_id)
        first_decode_time(bytes(data), rng.randrange(len(data)), 1)
