"""A `sidx` for an event's joined MP4, so a player starts after the first fragment.

The bridge writes fragmented MP4 with an empty `moov` and no index (bridge/record/fmp4.py).
Given such a file from a seekable source, FFmpeg's mov demuxer (which Chromium uses for
`<video src>`) reads every top-level box before it plays: the first frame of an event waited
for the whole event to be fetched and decrypted. A Segment Index Box (ISO/IEC 14496-12 §8.16.3)
placed after the `moov` whose references reach the end of the file tells it the fragments'
places and times; it then reads from the first fragment on (docs/review.md §4).

One `sidx` per track (video and sound), one reference per part in each: the part's bytes after
its `ftyp`+`moov` (each part starts on a keyframe, clip-format.md §8), its duration from the
track's first `tfdt` in the next part, and for the last part from the manifest's times (no later
part says where it ends). A track without an index makes Chromium's seeks slow: measured, a
seek past the buffered range took 2.3 s with the video's index alone, 0.3-0.6 s with both.
The boxes follow one another; each one's first_offset skips those after it, so all of them
point at the first part's first fragment.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

MAX_REFERENCE = (1 << 31) - 1  # referenced_size has 31 bits
SAP_KEYFRAME = 0x9000_0000  # starts_with_SAP = 1, SAP_type = 1, SAP_delta_time = 0


@dataclass(frozen=True, slots=True)
class Track:
    track_id: int
    timescale: int
    handler: bytes  # b"vide", b"soun", …


def _boxes(buf: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, offset, size) of the boxes in buf[start:end]; stops at anything malformed."""
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", buf, pos)
        if size == 1 and pos + 16 <= end:
            size = struct.unpack_from(">Q", buf, pos + 8)[0]
        if size < 8 or pos + size > end:
            return
        yield kind, pos, size
        pos += size


def _child(buf: bytes, start: int, end: int, kind: bytes) -> tuple[int, int] | None:
    for k, pos, size in _boxes(buf, start, end):
        if k == kind:
            return pos, size
    return None


def _full_box_field(buf: bytes, pos: int, size: int, v0: int, v1: int) -> int | None:
    """A u32 at `v0` (version 0) or `v1` (version 1) bytes into a full box's payload."""
    version = buf[pos + 8] if pos + 9 <= len(buf) else None
    at = pos + 12 + (v1 if version == 1 else v0)
    if version is None or at + 4 > pos + size:
        return None
    return int(struct.unpack_from(">I", buf, at)[0])


def tracks(head: bytes) -> list[Track]:
    """The tracks of `head` (an `ftyp` and a `moov`), in their order."""
    moov = _child(head, 0, len(head), b"moov")
    if moov is None:
        return []
    found = []
    for kind, pos, size in _boxes(head, moov[0] + 8, moov[0] + moov[1]):
        if kind != b"trak":
            continue
        tkhd = _child(head, pos + 8, pos + size, b"tkhd")
        mdia = _child(head, pos + 8, pos + size, b"mdia")
        if tkhd is None or mdia is None:
            continue
        hdlr = _child(head, mdia[0] + 8, sum(mdia), b"hdlr")
        mdhd = _child(head, mdia[0] + 8, sum(mdia), b"mdhd")
        if hdlr is None or mdhd is None or hdlr[1] < 24:
            continue
        track_id = _full_box_field(head, *tkhd, 8, 16)  # after creation + modification times
        timescale = _full_box_field(head, *mdhd, 8, 16)
        if track_id and timescale:
            found.append(Track(track_id, timescale, head[hdlr[0] + 16 : hdlr[0] + 20]))
    return found


def first_decode_time(plain: bytes, start: int, track_id: int) -> int | None:
    """The `tfdt` of `track_id` in the first `moof` at or after `start`, or None."""
    for kind, pos, size in _boxes(plain, start, len(plain)):
        if kind != b"moof":
            continue
        for k, traf, traf_size in _boxes(plain, pos + 8, pos + size):
            if k != b"traf":
                continue
            tfhd = _child(plain, traf + 8, traf + traf_size, b"tfhd")
            tfdt = _child(plain, traf + 8, traf + traf_size, b"tfdt")
            if tfhd is None or tfdt is None or tfhd[1] < 16 or tfdt[1] < 16:
                continue
            if struct.unpack_from(">I", plain, tfhd[0] + 12)[0] != track_id:
                continue
            if plain[tfdt[0] + 8] != 1:
                return int(struct.unpack_from(">I", plain, tfdt[0] + 12)[0])
            if tfdt[1] >= 20:
                return int(struct.unpack_from(">Q", plain, tfdt[0] + 12)[0])
        return None  # the first moof has no time for this track
    return None


def segment_index(indexed: list[tuple[Track, int, list[int]]], sizes: list[int]) -> bytes:
    """The `sidx` boxes, one per (track, earliest time, durations of each part), all of them
    referencing parts of `sizes` bytes that start right after the last box."""
    if not indexed or not sizes:
        raise ValueError("an index needs a track and a part")
    bodies = []
    for track, earliest, durations in indexed:
        if len(durations) != len(sizes):
            raise ValueError("a duration per part")
        body = bytearray(struct.pack(
            ">B3xIIQ", 1, track.track_id, track.timescale, earliest
        ))  # fmt: skip
        for size, duration in zip(sizes, durations, strict=True):
            if not 0 < size <= MAX_REFERENCE or not 0 <= duration < 1 << 32:
                raise ValueError(f"a sidx reference of {size} bytes, {duration} ticks")
            body += struct.pack(">III", size, duration, SAP_KEYFRAME)
        bodies.append(body)
    # Box i: 8 header + 16 (version..earliest) + 8 first_offset + 4 (reserved, count) + refs.
    lengths = [8 + len(b) + 12 for b in bodies]
    out = bytearray()
    for i, body in enumerate(bodies):
        first_offset = sum(lengths[i + 1 :])
        count = len(sizes)
        box = body[:20] + struct.pack(">QHH", first_offset, 0, count) + body[20:]
        out += struct.pack(">I4s", 8 + len(box), b"sidx") + box
    return bytes(out)
