"""Which camera audio a source carries, and how long each of its packets lasts.

Sources copy the camera's encoded audio packets untouched (no decode on the demux thread): a
stream is carried when FFmpeg has a decoder for its codec and its sample rate and channel count
are known, because every consumer (HKSV's AAC track, live Opus, clip AAC) decodes from these
parameters alone. Anything else (an RTP payload FFmpeg's RTSP demuxer does not know shows up as
codec "none") is left out: the camera streams video alone and says why once (`problem`).

Packet durations: FFmpeg's RTP depacketizers leave most of them unset, yet the prebuffer needs
them to keep exactly the audio that sounds over its video. They follow from the codec for the
usual camera codecs (AAC: one frame of 1024 samples; G.711: one byte per sample; linear PCM, as
ALSA capture devices give it: its sample width; Opus: the TOC byte, RFC 6716 §3.1); other codecs
get 0 (a packet then counts as lasting until the next).
"""

from __future__ import annotations

from typing import Any

import av

from bridge.media.packet import AudioInfo

# Opus frame sizes in 48 kHz samples by TOC configuration (RFC 6716 table 2): SILK 10/20/40/60,
# Hybrid 10/20, CELT 2.5/5/10/20 ms.
_OPUS_FRAME = [480, 960, 1920, 2880] * 3 + [480, 960] * 2 + [120, 240, 480, 960] * 4


def audio_info_of(stream: Any) -> tuple[AudioInfo | None, str | None]:
    """(AudioInfo, None) for a stream the bridge can carry, else (None, why not)."""
    ctx = stream.codec_context
    if ctx is None or not ctx.name or ctx.name == "none":
        return None, "an audio codec FFmpeg does not know"
    name = ctx.name
    try:
        av.Codec(name, "r")
    except Exception:
        return None, f"{name} audio, which cannot be decoded here"
    rate, channels = ctx.sample_rate or 0, ctx.channels or 0
    if rate <= 0 or channels <= 0:
        return None, f"{name} audio of unknown sample rate or channel count"
    bitrate = (ctx.bit_rate or 0) // 1000 or None
    return AudioInfo(name, rate, channels, bytes(ctx.extradata or b""), bitrate), None


def needs_analysis(stream: Any) -> bool:
    """A known audio codec whose parameters the SDP does not give: rate or channels missing, or
    MPEG audio over RTP ("MPA/90000": the RTP clock, not the sample rate, and layer 2 or 3 only
    the packets say). FFmpeg's stream analysis finds them in the first packets."""
    ctx = stream.codec_context
    if ctx is None or not ctx.name or ctx.name == "none":
        return False
    if ctx.name in ("mp1", "mp2", "mp3") and ctx.sample_rate == 90000:
        return True
    return not (ctx.sample_rate and ctx.channels)


def packet_seconds(info: AudioInfo, data: bytes) -> float:
    """How long an encoded packet of this stream sounds; 0.0 when the codec does not tell."""
    if width := pcm_sample_bytes(info.codec):
        return len(data) / (width * info.channels * info.sample_rate)
    if info.codec == "aac":
        return 1024 / info.sample_rate
    if info.codec in ("opus", "libopus") and data:
        return opus_samples(data) / 48000
    return 0.0


def pcm_sample_bytes(codec: str) -> int:
    """Bytes per sample of an uncompressed codec (G.711, or linear PCM such as an ALSA capture
    device's pcm_s16le or RTSP's L16, pcm_s16be); 0 for anything else."""
    if codec in ("pcm_alaw", "pcm_mulaw", "pcm_s8", "pcm_u8"):
        return 1
    kind = codec.removeprefix("pcm_")
    if kind == codec or kind[:1] not in ("s", "u", "f") or not kind.endswith(("le", "be")):
        return 0
    bits = kind[1:-2]
    return int(bits) // 8 if bits in ("16", "24", "32", "64") else 0


def opus_samples(packet: bytes) -> int:
    """48 kHz samples in an Opus packet, from its TOC byte (0 for a malformed packet)."""
    toc = packet[0]
    frame = _OPUS_FRAME[toc >> 3]
    code = toc & 0x03
    if code == 0:
        frames = 1
    elif code in (1, 2):
        frames = 2
    elif len(packet) >= 2:
        frames = packet[1] & 0x3F
    else:
        return 0
    return frame * frames
