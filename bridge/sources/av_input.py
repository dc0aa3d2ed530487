"""PyAV inputs: RTSP cameras, V4L2 USB cameras and local files (looping, paced to real time).

H.264 inputs are copied packet by packet (no decode); anything else (MJPEG or YUYV webcams, a
file in another codec) is decoded and re-encoded to H.264 once, here, for every consumer.

Opening an RTSP camera quickly (`fast_options`): with FFmpeg's default probing, av.open() of an
H.264 camera took ~1.9 s on loopback (1280x720@15, GOP 15), most of it
avformat_find_stream_info() decoding ~7 frames from a keyframe on to guess the decoder's
reordering delay, which we never use (packets are copied; decoders here are our own). What we do
use is in the SDP and the SPS: size, SPS/PPS (sprop-parameter-sets) and the frame rate (the
SPS's VUI timing, which the full analysis takes too when it is there: a stream whose VUI says
30 fps and whose timestamps say 10 came out as 30 from it). With `probesize=32` FFmpeg stops
after the first packet and the open takes 0.06-0.25 s, with the same size, SPS/PPS, profile and
fps (measured at 5, 10, 15, 25 and 30 fps). A camera whose SDP/SPS lack any of these is opened
again with the default probing, so a fast open never costs correctness, only one more
connection for such cameras.

Sound (`audio=True`): the camera's first audio stream is demuxed with the video and its packets
copied as they are (audio_stream.py says which codecs are carried). Both streams' pts come from
one timeline (FFmpeg's RTSP demuxer starts each stream at its RTP-Info time of the PLAY and maps
both through the RTCP sender reports once they arrive), and both are rebased by the same amount
(the first video frame's pts): an audio packet and the frame shown at the same instant get the
same pts. Audio that arrives before that first frame waits for it (its pts needs the anchor)
and goes out with it; the prebuffer keeps what sounds over its video. A camera whose
audio cannot be carried streams its video alone; `audio_problem` says why, once per open.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import av
import av.audio.stream
import av.container
import av.video.stream

from bridge.media.encoder import H264Encoder
from bridge.media.h264 import (
    NAL_PPS,
    NAL_SPS,
    AccessUnitNormalizer,
    nal_type,
    parameter_sets_from_extradata,
)
from bridge.media.h264_sps import sps_size
from bridge.media.packet import AudioInfo, AudioPacket, StreamInfo
from bridge.sources.audio_stream import audio_info_of, needs_analysis, packet_seconds

# Demuxer options for a fast open: stop probing after the first packet (see the docstring),
# and keep that packet: with the cameras' `nobuffer` (FFmpeg's default flags otherwise) the
# analysis drops what it read, the first slice of the first keyframe, and the first picture of
# every recording then lacked its top (a keyframe missing its first slice is no keyframe now
# either: h264.AccessUnitNormalizer.partial).
FAST_PROBE = {"probesize": "32", "fflags": "autobsf"}


@dataclass(frozen=True, slots=True)
class AVInputOptions:
    url: str  # what av.open gets: rtsp://…, /dev/video0, /path/file.mp4
    format: str | None = None  # "v4l2" for USB cameras
    options: dict[str, str] = field(default_factory=dict)  # demuxer options
    # Tried first, on top of `options`; kept only when the stream is fully described with them.
    fast_options: dict[str, str] = field(default_factory=dict)
    open_timeout: float = 10.0
    read_timeout: float = 5.0  # a camera silent this long is dead
    loop: bool = False  # files: start again at the end
    realtime: bool = False  # files: pace packets to their timestamps like a camera
    encode_bitrate_kbps: int = 2000  # for non-H.264 inputs
    audio: bool = False  # also demux (copy) the camera's audio stream


#: Audio packets held (at most) until the first video timestamp anchors the clock.
EARLY_AUDIO = 50

#: What `packets()` yields: a video access unit (Annex B, pts, keyframe) or an audio packet.
Item = tuple[bytes, float, bool] | AudioPacket


class AVInput:
    def __init__(self, opts: AVInputOptions) -> None:
        self.opts = opts
        self._container: av.container.InputContainer | None = None
        self._stream: av.video.stream.VideoStream | None = None
        self._normalizer: AccessUnitNormalizer | None = None
        self._encoder: H264Encoder | None = None
        self._fps = 15.0
        self.fast_opened = False  # the stream was described without FFmpeg's analysis
        self._audio: av.audio.stream.AudioStream | None = None
        self.audio_info: AudioInfo | None = None  # the audio carried, if any
        self.audio_problem: str | None = None  # why the camera's audio is not carried

    def open(self) -> StreamInfo:
        if self.opts.fast_options:
            container = self._open_container({**self.opts.options, **self.opts.fast_options})
            if fully_described(container, audio=self.opts.audio):
                self.fast_opened = True
                return self._start(container)
            container.close()
        return self._start(self._open_container(self.opts.options))

    def _open_container(self, options: dict[str, str]) -> av.container.InputContainer:
        return av.open(
            self.opts.url,
            format=self.opts.format,
            options=options,
            timeout=(self.opts.open_timeout, self.opts.read_timeout),
        )

    def _start(self, container: av.container.InputContainer) -> StreamInfo:
        self._container = container
        if not container.streams.video:
            raise RuntimeError("no video stream")
        stream = container.streams.video[0]
        self._stream = stream
        if self.opts.audio and container.streams.audio:
            self._audio = container.streams.audio[0]
            self.audio_info, self.audio_problem = audio_info_of(self._audio)
            if self.audio_info is None:
                self._audio = None
        ctx = stream.codec_context
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        self._fps = float(rate) if rate else 15.0
        if not (1.0 <= self._fps <= 120.0):
            self._fps = 15.0
        bitrate = (ctx.bit_rate or 0) // 1000 or None
        if ctx.name == "h264":
            self._normalizer = AccessUnitNormalizer(ctx.extradata)
            if not self._normalizer.sps:
                # RTSP without sprop-parameter-sets: SPS/PPS come with the first keyframe.
                self._prime_parameter_sets()
            width, height = ctx.width, ctx.height
            if not width or not height:
                # Analysis stopped at an audio packet: the SPS (from the SDP) says the size.
                width, height = _sps_size(ctx.extradata) or (0, 0)
            if not width or not height:
                raise RuntimeError("H.264 stream without a known size")
            return StreamInfo(
                "h264",
                width,
                height,
                self._fps,
                self._normalizer.parameter_sets,
                self._normalizer.profile,
                bitrate,
            )
        stream.thread_type = "AUTO"
        width, height = ctx.width - ctx.width % 2, ctx.height - ctx.height % 2
        self._encoder = H264Encoder(
            width, height, self._fps, bitrate_kbps=self.opts.encode_bitrate_kbps
        )
        return StreamInfo(
            "h264",
            width,
            height,
            self._fps,
            b"",
            self._encoder.profile,
            self.opts.encode_bitrate_kbps,
        )

    def _prime_parameter_sets(self) -> None:
        self._primed: list[av.Packet] = []
        assert self._container and self._stream and self._normalizer
        for packet in self._container.demux(self._stream):
            if packet.size == 0:
                continue
            self._primed.append(packet)
            self._normalizer.normalize(bytes(packet))
            if self._normalizer.sps and self._normalizer.pps:
                return
            if len(self._primed) > 300:
                raise RuntimeError("no SPS/PPS in the first 300 packets")

    def packets(self) -> Iterator[Item]:
        return _merge_split_keyframes(self._timed_packets())

    def _timed_packets(self) -> Iterator[Item]:
        assert self._container is not None and self._stream is not None
        stream = self._stream
        tb = float(stream.time_base or 0) or 1 / 90000
        audio, audio_info = self._audio, self.audio_info
        streams = [stream] if audio is None else [stream, audio]
        atb = float(audio.time_base or 0) if audio is not None else 0.0
        offset = 0.0  # added on every loop of a file so timestamps keep increasing
        frame_dur = 1.0 / self._fps
        wall_start: float | None = None
        last_pts = 0.0
        first_pts: float | None = None
        early: list[tuple[float, bytes, float]] = []  # audio before first_pts: (s, data, s)
        audio_end = 0.0  # where the newest audio packet ends (a file's next loop starts after)
        pending = list(getattr(self, "_primed", []))
        self._primed = []
        while True:
            demuxed = self._container.demux(*streams)
            for packet in _chain(pending, demuxed):
                if packet.size == 0:
                    continue
                if audio is not None and packet.stream is audio:
                    assert audio_info is not None
                    raw = packet.pts if packet.pts is not None else packet.dts
                    if raw is None or not atb:
                        continue
                    data = bytes(packet)
                    seconds = (packet.duration or 0) * atb or packet_seconds(audio_info, data)
                    if first_pts is None:  # the clock is anchored by the first video pts
                        early = [*early[-EARLY_AUDIO + 1 :], (raw * atb, data, seconds)]
                        continue
                    pts = raw * atb - first_pts + offset
                    if wall_start is not None:
                        _pace(wall_start, pts)
                    audio_end = max(audio_end, pts + seconds)
                    yield AudioPacket(data, pts, seconds)
                    continue
                raw = packet.pts if packet.pts is not None else packet.dts
                if raw is None and first_pts is None:
                    # RTSP's very first packet can lack a timestamp; it is the start of the
                    # first access unit, whose next piece anchors the clock at 0.
                    pts = offset
                elif raw is None:
                    pts = last_pts + frame_dur
                else:
                    pts = raw * tb
                    if first_pts is None:
                        first_pts = pts
                        for at, data, seconds in early:  # audio that came before it
                            yield AudioPacket(data, at - first_pts + offset, seconds)
                        early = []
                    pts = pts - first_pts + offset
                last_pts = max(last_pts, pts)
                if self.opts.realtime:
                    if wall_start is None:
                        wall_start = time.monotonic() - pts
                    _pace(wall_start, pts)
                yield from self._convert(packet, pts)
            pending = []
            if not self.opts.loop:
                return
            self._container.seek(0, stream=stream)
            offset = max(last_pts + frame_dur, audio_end)  # the next loop starts after both
            first_pts = None

    def _convert(self, packet: av.Packet, pts: float) -> Iterator[tuple[bytes, float, bool]]:
        if self._normalizer is not None:
            data, idr = self._normalizer.normalize(bytes(packet))
            whole = not self._normalizer.partial  # FFmpeg flags a keyframe missing its top too
            yield data, pts, idr or (bool(packet.is_keyframe) and whole)
            return
        assert self._encoder is not None
        for frame in packet.decode():
            yield from self._encoder.encode(frame, pts)

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None


def fully_described(container: av.container.InputContainer, *, audio: bool = False) -> bool:
    """An H.264 video stream whose size, SPS/PPS and frame rate are known without analysis
    (and, with `audio`, an audio stream's rate and channels when its codec is known)."""
    if not container.streams.video:
        return False
    if audio and container.streams.audio and needs_analysis(container.streams.audio[0]):
        return False
    stream = container.streams.video[0]
    ctx = stream.codec_context
    if ctx.name != "h264":
        return False
    params, _ = parameter_sets_from_extradata(ctx.extradata)
    if not {NAL_SPS, NAL_PPS} <= {nal_type(nal) for nal in params}:
        return False
    if not (ctx.width and ctx.height) and _sps_size(ctx.extradata) is None:
        return False
    rate = stream.average_rate
    return rate is not None and 1.0 <= float(rate) <= 120.0


def _sps_size(extradata: bytes | None) -> tuple[int, int] | None:
    """The size the stream's SPS declares: FFmpeg reports 0x0 when its analysis, cut to the
    first packet, saw only an audio packet (a camera with sound)."""
    params, _ = parameter_sets_from_extradata(extradata)
    return next((size for n in params if nal_type(n) == NAL_SPS if (size := sps_size(n))), None)


def _pace(wall_start: float, pts: float) -> None:
    """A file played like a camera: wait until `pts` is due (at most 1 s at a time)."""
    delay = wall_start + pts - time.monotonic()
    if delay > 0:
        time.sleep(min(delay, 1.0))


def _chain(first: list[av.Packet], rest: Iterator[av.Packet]) -> Iterator[av.Packet]:
    yield from first
    yield from rest


def _merge_split_keyframes(packets: Iterator[Item]) -> Iterator[Item]:
    """Join the pieces of one access unit that FFmpeg hands over as separate packets.

    Cameras that repeat SPS/PPS in front of every IDR slice make FFmpeg's parser split a
    keyframe into several packets with the same timestamp, and a consumer starting at the
    first piece would see half a picture. Holding a keyframe until the next packet shows
    whether more of it follows costs one frame of delay per GOP, so it is done only while
    the camera has been seen to split (and for its first keyframes, until it has shown it
    does not).
    """
    held: tuple[bytes, float, bool] | None = None
    hold = True
    clean = 0  # keyframes in a row that turned out whole
    last_key_pts: float | None = None
    for item in packets:
        if isinstance(item, AudioPacket):
            yield item  # audio is never split or held (a held keyframe keeps its own pts)
            continue
        data, pts, key = item
        if held is not None:
            if pts == held[1]:
                held = (held[0] + data, pts, True)
                clean = -1  # this camera splits keyframes
                continue
            yield held
            held = None
            clean += 1
            if clean >= 3:
                hold = False
        elif pts == last_key_pts:
            # A split keyframe we did not hold for: send the rest on, and hold from now on.
            hold, clean = True, 0
            yield data, pts, False
            continue
        if key:
            last_key_pts = pts
            if hold:
                held = (data, pts, key)
                continue
        yield data, pts, key
    if held is not None:
        yield held
