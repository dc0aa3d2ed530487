"""Just enough H.264 bitstream handling for RTP: split Annex B access units into NAL units."""

from __future__ import annotations

NAL_SLICE = 1
NAL_IDR = 5
NAL_SEI = 6
NAL_SPS = 7
NAL_PPS = 8
NAL_AUD = 9
NAL_FILLER = 12

# Not worth sending over RTP: access unit delimiters and filler only cost bandwidth (RFC 6184
# packetizers commonly drop them; receivers find AU boundaries from the marker bit).
_DROPPED_TYPES = frozenset({NAL_AUD, NAL_FILLER})


def nal_type(nal: bytes) -> int:
    return nal[0] & 0x1F


def split_annexb(data: bytes) -> list[bytes]:
    """NAL units of an Annex B byte stream, without start codes (3- or 4-byte) or empty units."""
    nals: list[bytes] = []
    n = len(data)
    start = _next_start(data, 0)
    while start is not None:
        begin = start[1]
        nxt = _next_start(data, begin)
        end = nxt[0] if nxt is not None else n
        # trailing_zero_8bits belong to neither NAL; a 4-byte start code leaves one zero behind.
        while end > begin and data[end - 1] == 0:
            end -= 1
        if end > begin:
            nals.append(data[begin:end])
        start = nxt
    return nals


def _next_start(data: bytes, pos: int) -> tuple[int, int] | None:
    """(index of the 00 00 01 prefix, index of the first NAL byte) at or after pos."""
    i = data.find(b"\x00\x00\x01", pos)
    if i < 0:
        return None
    return i, i + 3


def rtp_nals(access_unit: bytes) -> list[bytes]:
    """NAL units of one access unit that are worth putting on the wire."""
    return [nal for nal in split_annexb(access_unit) if nal_type(nal) not in _DROPPED_TYPES]


def has_parameter_sets(nals: list[bytes]) -> bool:
    types = {nal_type(nal) for nal in nals}
    return NAL_SPS in types and NAL_PPS in types
