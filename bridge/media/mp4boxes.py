"""Top-level MP4 boxes from a byte stream, and the fragment rebasing that event parts need.

An event is sealed in consecutive parts (docs/clip-format.md §8), each a complete fragmented
MP4 (`ftyp`, `moov`, then `moof`+`mdat` pairs). FFmpeg's muxer starts every file's timeline at
0, so on its own part 3 of an event would claim to start where part 0 did. `FragmentRebaser`
moves each part onto the event's timeline as its bytes pass by: it adds the part's offset to
every `tfdt` (base media decode time; per track, each in its own timescale, when a clip carries
sound beside its video) and a per-part base to every `mfhd` sequence number. Each
part then still plays alone, and the parts of an event joined as `part 0` + the fragments of
the later parts (their `ftyp`/`moov` dropped, `EventJoiner`) are one valid fragmented MP4 with
the real gaps between parts kept.

Both work on a stream (no seeking, bounded memory): only a `moof` (a few hundred bytes per
fragment) is ever held whole; `mdat` and everything else pass through in the pieces they came in.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Mapping
from typing import Protocol

#: Sequence numbers of part n start at n * PART_SEQUENCE_STRIDE + 1: increasing across the parts
#: of an event without knowing how many fragments earlier parts had (a part has far fewer).
PART_SEQUENCE_STRIDE = 1 << 16
_CONTAINERS = {b"moof", b"traf"}


class Mp4Error(ValueError):
    """The bytes are not a sequence of MP4 boxes."""


class Writable(Protocol):
    def write(self, data: bytes, /) -> object: ...


class TopLevelBoxes:
    """Splits a byte stream into top-level boxes as it is fed.

    `feed(data)` returns `(type, piece, whole)` tuples in stream order: a box whose type is in
    `collect` comes as one piece holding all of it (`whole` True); any other box comes as one
    or more pieces, the first starting with its header.
    """

    def __init__(self, collect: frozenset[bytes] = frozenset()) -> None:
        self._collect = collect
        self._header = bytearray()  # the header of the next box, while incomplete
        self._box = bytearray()  # a collected box, while incomplete
        self._type = b""
        self._left = 0  # bytes of the current box still to come (-1: to the end of the stream)
        self._collecting = False

    def feed(self, data: bytes) -> list[tuple[bytes, bytes, bool]]:
        out: list[tuple[bytes, bytes, bool]] = []
        view = memoryview(data)
        while view:
            if self._left == 0:
                view = self._read_header(view, out)
                continue
            n = len(view) if self._left < 0 else min(self._left, len(view))
            piece, view = bytes(view[:n]), view[n:]
            if self._left > 0:
                self._left -= n
            if self._collecting:
                self._box += piece
                if self._left == 0:
                    out.append((self._type, bytes(self._box), True))
                    self._box.clear()
            else:
                out.append((self._type, piece, False))
        return out

    def close(self) -> None:
        """The stream ended: raise if it ended inside a box."""
        if self._header or self._left > 0:
            raise Mp4Error("the stream ends inside a box")

    def _read_header(
        self, view: memoryview, out: list[tuple[bytes, bytes, bool]]
    ) -> memoryview:
        need = 8
        if len(self._header) >= 8 and struct.unpack(">I", self._header[:4])[0] == 1:
            need = 16  # 64-bit size follows the type
        take = min(need - len(self._header), len(view))
        self._header += view[:take]
        view = view[take:]
        if len(self._header) < need:
            return view
        size32 = struct.unpack(">I", self._header[:4])[0]
        if size32 == 1 and need == 8:
            return view  # read the 64-bit size next
        size = struct.unpack(">Q", self._header[8:16])[0] if size32 == 1 else size32
        header, self._header = bytes(self._header), bytearray()
        self._type = header[4:8]
        if size == 0:
            self._left = -1  # the box runs to the end of the stream
        elif size < len(header):
            raise Mp4Error(f"box {self._type!r} claims {size} bytes, less than its header")
        else:
            self._left = size - len(header)
        self._collecting = self._type in self._collect
        if self._collecting:
            if self._left < 0:
                raise Mp4Error(f"box {self._type!r} without a size cannot be rewritten")
            self._box = bytearray(header)
            if self._left == 0:
                out.append((self._type, header, True))
                self._box.clear()
        else:
            out.append((self._type, header, False))
        return view


def _children(box: bytearray, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, box end) of the boxes in box[start:end]."""
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", box[pos : pos + 8])
        header = 8
        if size == 1:
            size = struct.unpack(">Q", box[pos + 8 : pos + 16])[0]
            header = 16
        if size < header or pos + size > end:
            raise Mp4Error(f"box {kind!r} inside a fragment overruns it")
        yield kind, pos + header, pos + size
        pos += size


def rebase_moof(
    moof: bytes, decode_time_offset: int | Mapping[int, int], sequence_offset: int
) -> bytes:
    """A `moof` box with the offset added to each `tfdt` and `sequence_offset` to its `mfhd`.

    `decode_time_offset`: one offset for every track, or one per track_ID (in that track's
    timescale; a track not in the mapping is left alone)."""
    box = bytearray(moof)
    offsets = decode_time_offset if isinstance(decode_time_offset, Mapping) else None

    def walk(start: int, end: int) -> None:
        track: int | None = None  # the track_ID of the traf being walked (its tfhd comes first)
        for kind, payload, stop in _children(box, start, end):
            if kind in _CONTAINERS:
                walk(payload, stop)
            elif kind == b"mfhd" and stop - payload >= 8:
                (seq,) = struct.unpack(">I", box[payload + 4 : payload + 8])
                box[payload + 4 : payload + 8] = struct.pack(">I", seq + sequence_offset)
            elif kind == b"tfhd" and stop - payload >= 8:
                (track,) = struct.unpack(">I", box[payload + 4 : payload + 8])
            elif kind == b"tfdt" and stop - payload >= 8:
                offset = decode_time_offset if offsets is None else offsets.get(track or 0, 0)
                assert isinstance(offset, int)
                if box[payload] == 1:
                    (t,) = struct.unpack(">Q", box[payload + 4 : payload + 12])
                    box[payload + 4 : payload + 12] = struct.pack(">Q", t + offset)
                else:  # version 0: 32 bits (FFmpeg writes version 1; a wrap is an error)
                    (t,) = struct.unpack(">I", box[payload + 4 : payload + 8])
                    if t + offset >= 1 << 32:
                        raise Mp4Error("a 32-bit tfdt cannot hold the part's offset")
                    box[payload + 4 : payload + 8] = struct.pack(">I", t + offset)

    walk(8 if struct.unpack(">I", box[:4])[0] != 1 else 16, len(box))
    return bytes(box)


class FragmentRebaser:
    """A writable that moves one part's fragments onto its event's timeline, then forwards."""

    def __init__(
        self, sink: Writable, decode_time_offset: int | Mapping[int, int], part: int
    ) -> None:
        """`decode_time_offset`: as rebase_moof's (one for all tracks, or per track_ID)."""
        self._sink = sink
        self._offset = decode_time_offset
        self._sequence = part * PART_SEQUENCE_STRIDE
        self._boxes = TopLevelBoxes(collect=frozenset({b"moof"}))

    def write(self, data: bytes, /) -> int:
        for kind, piece, whole in self._boxes.feed(data):
            if whole and kind == b"moof" and (_nonzero(self._offset) or self._sequence):
                piece = rebase_moof(piece, self._offset, self._sequence)
            self._sink.write(piece)
        return len(data)


def _nonzero(offset: int | Mapping[int, int]) -> bool:
    return any(offset.values()) if isinstance(offset, Mapping) else offset != 0


class EventJoiner:
    """Joins the decrypted parts of one event into one fragmented MP4, as a stream.

    `start_part()` before each part's bytes, `feed(bytes)` to pass them; `emit(bytes)` receives
    the output: the first part's `ftyp` and `moov`, then every part's fragments. `free` boxes
    (padding) are dropped. Every part must carry the same `moov` as the first (same camera
    stream, and the same audio track when the clip has sound): a part with another is refused,
    since its samples would be misread. Nothing is re-timed here: each part's fragments already
    carry the event's decode times for every track (FragmentRebaser).
    """

    _HEADERS = frozenset({b"ftyp", b"moov"})

    def __init__(self, emit: Callable[[bytes], object]) -> None:
        self._emit = emit
        self._moov: bytes | None = None
        self._parts = 0
        self._boxes = TopLevelBoxes(collect=self._HEADERS)

    def start_part(self) -> None:
        self._boxes.close()
        self._boxes = TopLevelBoxes(collect=self._HEADERS)
        self._parts += 1

    def feed(self, data: bytes) -> None:
        for kind, piece, _whole in self._boxes.feed(data):
            if kind == b"free":
                continue
            if kind == b"moov":
                if self._moov is None:
                    self._moov = piece
                elif piece != self._moov:
                    raise Mp4Error(
                        f"part {self._parts} of the event has another stream header (moov)"
                    )
                else:
                    continue
            elif kind == b"ftyp" and self._parts > 1:
                continue
            self._emit(piece)

    def close(self) -> None:
        self._boxes.close()
