"""H.264 bitstream helpers: Annex B / AVCC conversion and SPS facts.

Every consumer inside the bridge works on Annex B access units whose keyframes carry SPS and
PPS; files (MP4/MKV) deliver AVCC length-prefixed NALs, RTSP and x264 deliver Annex B.
"""

from __future__ import annotations

NAL_SLICE = 1
NAL_IDR = 5
NAL_SEI = 6
NAL_SPS = 7
NAL_PPS = 8
NAL_AUD = 9
NAL_FILLER = 12

START_CODE = b"\x00\x00\x00\x01"

_PROFILES = {66: "baseline", 77: "main", 88: "extended", 100: "high"}


def nal_type(nal: bytes) -> int:
    return nal[0] & 0x1F if nal else 0


def first_mb_in_slice(nal: bytes) -> int | None:
    """The slice header's first field (ue(v) right after the NAL header): 0 for the slice that
    starts a picture. None if the bytes cannot hold it."""
    head = nal[1:9].replace(b"\x00\x00\x03", b"\x00\x00")  # emulation prevention
    bits = int.from_bytes(head, "big")
    width = 8 * len(head)
    zeros = 0
    while zeros < width and not bits >> (width - 1 - zeros) & 1:
        zeros += 1
    if 2 * zeros + 1 > width:
        return None
    value = bits >> (width - 2 * zeros - 1) & ((1 << (zeros + 1)) - 1)
    return value - 1


def split_annexb(data: bytes) -> list[bytes]:
    """NAL units of an Annex B byte stream, without start codes (3- or 4-byte) or empty units."""
    nals: list[bytes] = []
    start = data.find(b"\x00\x00\x01")
    if start < 0:
        return [data] if data else []
    while start >= 0:
        begin = start + 3
        nxt = data.find(b"\x00\x00\x01", begin)
        end = nxt if nxt >= 0 else len(data)
        # trailing_zero_8bits belong to neither NAL; a 4-byte start code leaves one zero behind.
        while end > begin and data[end - 1] == 0:
            end -= 1
        if end > begin:
            nals.append(data[begin:end])
        start = nxt
    return nals


def rtp_nals(access_unit: bytes) -> list[bytes]:
    """NAL units of one access unit worth putting on the wire: access unit delimiters and
    filler only cost bandwidth (receivers find AU boundaries from the RTP marker bit)."""
    return [n for n in split_annexb(access_unit) if nal_type(n) not in (NAL_AUD, NAL_FILLER)]


def has_parameter_sets(nals: list[bytes]) -> bool:
    types = {nal_type(nal) for nal in nals}
    return NAL_SPS in types and NAL_PPS in types


def join_annexb(nals: list[bytes]) -> bytes:
    return b"".join(START_CODE + n for n in nals)


def split_avcc(data: bytes, length_size: int = 4) -> list[bytes]:
    nals: list[bytes] = []
    pos = 0
    while pos + length_size <= len(data):
        size = int.from_bytes(data[pos : pos + length_size], "big")
        pos += length_size
        if size == 0 or pos + size > len(data):
            break
        nals.append(data[pos : pos + size])
        pos += size
    return nals


def parse_avcc_extradata(extradata: bytes) -> tuple[list[bytes], int]:
    """avcC box payload → (SPS and PPS NALs, NAL length size)."""
    if len(extradata) < 7 or extradata[0] != 1:
        raise ValueError("not an avcC record")
    length_size = (extradata[4] & 0x03) + 1
    nals: list[bytes] = []
    pos = 5
    num_sps = extradata[pos] & 0x1F
    pos += 1
    for _ in range(num_sps):
        n = int.from_bytes(extradata[pos : pos + 2], "big")
        nals.append(extradata[pos + 2 : pos + 2 + n])
        pos += 2 + n
    num_pps = extradata[pos]
    pos += 1
    for _ in range(num_pps):
        n = int.from_bytes(extradata[pos : pos + 2], "big")
        nals.append(extradata[pos + 2 : pos + 2 + n])
        pos += 2 + n
    return nals, length_size


def parameter_sets_from_extradata(extradata: bytes | None) -> tuple[list[bytes], int | None]:
    """SPS/PPS from codec extradata in either form; the AVCC length size or None for Annex B."""
    if not extradata:
        return [], None
    if extradata[0] == 1:
        return parse_avcc_extradata(extradata)
    return [n for n in split_annexb(extradata) if nal_type(n) in (NAL_SPS, NAL_PPS)], None


def profile_of(sps: bytes) -> str:
    if len(sps) < 2:
        return "main"
    return _PROFILES.get(sps[1], "high")


class AccessUnitNormalizer:
    """Turns a stream's packets into Annex B access units with SPS/PPS before each keyframe."""

    def __init__(self, extradata: bytes | None) -> None:
        params, self._length_size = parameter_sets_from_extradata(extradata)
        self.sps = next((n for n in params if nal_type(n) == NAL_SPS), b"")
        self.pps = next((n for n in params if nal_type(n) == NAL_PPS), b"")
        self.partial = False  # the last access unit was a keyframe missing its first slice

    def normalize(self, data: bytes) -> tuple[bytes, bool]:
        """Returns (Annex B access unit, a whole IDR picture starts here)."""
        if self._length_size is not None:
            nals = split_avcc(data, self._length_size)
        else:
            nals = split_annexb(data)
        has_idr = False
        has_params = False
        first_slice: int | None = None
        kept: list[bytes] = []
        for nal in nals:
            t = nal_type(nal)
            if t == NAL_AUD:
                continue  # access unit delimiters are noise for RTP and re-muxing
            if t == NAL_SPS:
                self.sps, has_params = nal, True
            elif t == NAL_PPS:
                self.pps, has_params = nal, True
            elif t == NAL_IDR:
                has_idr = True
            if t in (NAL_SLICE, NAL_IDR) and first_slice is None:
                first_slice = first_mb_in_slice(nal)
            kept.append(nal)
        # A keyframe whose first slice does not start the picture lost its top (a stream
        # joined mid-picture: FFmpeg's `nobuffer` analysis, or loss): not a place to start.
        self.partial = has_idr and first_slice != 0
        has_idr = has_idr and not self.partial
        if has_idr and not has_params and self.sps and self.pps:
            kept = [self.sps, self.pps, *kept]
        return join_annexb(kept), has_idr

    @property
    def parameter_sets(self) -> bytes:
        return join_annexb([n for n in (self.sps, self.pps) if n])

    @property
    def profile(self) -> str:
        return profile_of(self.sps)
