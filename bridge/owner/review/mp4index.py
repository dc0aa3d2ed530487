"""A `sidx` for an event's joined MP4, so a player starts after the first fragment.

The bridge writes fragmented MP4 with an empty `moov` and no index (bridge/record/fmp4.py).
Given such a file from a seekable source, FFmpeg's mov demuxer (which Chromium uses for
`<video src>`) reads every top-level box before it plays: the first frame of an event waited
for the whole event to be fetched and decrypted. A Segment Index Box (ISO/IEC 14496-12 §8.16.3)
placed after the `moov` whose references reach the end of the file tells it the fragments'
places and times; it then reads from the first fragment on (docs/review.md §4).

One reference per part: its bytes after the `ftyp`+`moov` (each part starts on a keyframe,
clip-format.md §8), its duration from the first video `tfdt` of the next part, and for the last
part from the manifest's times (no later part says where it ends).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

MAX_REFERENCE = (1 << 31) - 1  # referenced_size has 31 bits
SAP_KEYFRAME = 0x9000_0000  # starts_with_SAP = 1, SAP_type = 1, SAP_delta_time = 0


@dataclass(frozen=True, slots=True)
class VideoTrack:
    track_id: int
    timescale: int


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


def video_track(head: bytes) -> VideoTrack | None:
    """The first video track of `head` (an `ftyp` and a `moov`), or None."""
    moov = _child(head, 0, len(head), b"moov")
    if moov is None:
        return None
    for kind, pos, size in _boxes(head, moov[0] + 8, moov[0] + moov[1]):
        if kind != b"trak":
            continue
        tkhd = _child(head, pos + 8, pos + size, b"tkhd")
        mdia = _child(head, pos + 8, pos + size, b"mdia")
        if tkhd is None or mdia is None:
            continue
        hdlr = _child(head, mdia[0] + 8, sum(mdia), b"hdlr")
        mdhd = _child(head, mdia[0] + 8, sum(mdia), b"mdhd")
        if hdlr is None or mdhd is None or head[hdlr[0] + 16 : hdlr[0] + 20] != b"vide":
            continue
        track_id = _full_box_field(head, *tkhd, 8, 16)  # after creation + modification times
        timescale = _full_box_field(head, *mdhd, 8, 16)
        if track_id and timescale:
            return VideoTrack(track_id, timescale)
    return None


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
            if tfhd is None or tfdt is None or tfhd[1] < 16:
                continue
            if struct.unpack_from(">I", plain, tfhd[0] + 12)[0] != track_id:
                continue
            if plain[tfdt[0] + 8] == 1 and tfdt[1] >= 20:
                return int(struct.unpack_from(">Q", plain, tfdt[0] + 12)[0])
            if tfdt[1] >= 16:
                return int(struct.unpack_from(">I", plain, tfdt[0] + 12)[0])
        return None  # the first moof has no time for this track
    return None


def sidx_box(track: VideoTrack, earliest: int, references: list[tuple[int, int]]) -> bytes:
    """A version-1 `sidx` for `references` [(bytes, duration in the track's timescale)], the
    first starting right after the box (first_offset 0) at `earliest`."""
    if not references:
        raise ValueError("a sidx needs at least one reference")
    body = bytearray(struct.pack(
        ">B3xIIQQHH", 1, track.track_id, track.timescale, earliest, 0, 0, len(references)
    ))
    for size, duration in references:
        if not 0 < size <= MAX_REFERENCE or not 0 <= duration < 1 << 32:
            raise ValueError(f"a sidx reference of {size} bytes, {duration} ticks")
        body += struct.pack(">III", size, duration, SAP_KEYFRAME)
    return struct.pack(">I4s", 8 + len(body), b"sidx") + bytes(body)
