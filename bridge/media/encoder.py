"""H.264 encoding with libx264 for sources that do not deliver H.264 (demo, MJPEG/YUYV USB)."""

from __future__ import annotations

from fractions import Fraction

import av
import av.video.frame

from bridge.media.h264 import AccessUnitNormalizer


class H264Encoder:
    """Low-latency libx264 encoder producing Annex B access units (SPS/PPS on keyframes)."""

    def __init__(
        self,
        width: int,
        height: int,
        fps: float,
        *,
        bitrate_kbps: int = 2000,
        gop_seconds: float = 1.0,
        preset: str = "ultrafast",
        profile: str = "main",
    ) -> None:
        self.width, self.height, self.fps = width, height, fps
        ctx = av.CodecContext.create("libx264", "w")
        ctx.width = width
        ctx.height = height
        ctx.pix_fmt = "yuv420p"
        ctx.time_base = Fraction(1, 90000)
        ctx.framerate = Fraction(fps).limit_denominator(1001)
        ctx.bit_rate = bitrate_kbps * 1000
        ctx.gop_size = max(1, round(gop_seconds * fps))
        ctx.max_b_frames = 0
        ctx.thread_count = 1  # one core per camera at most; latency over throughput
        ctx.options = {
            "preset": preset,
            "tune": "zerolatency",
            "profile": profile,
            # Repeat SPS/PPS in-band at every IDR so any keyframe is a start point.
            "x264-params": f"repeat-headers=1:keyint={ctx.gop_size}:min-keyint={ctx.gop_size}"
            f":vbv-maxrate={bitrate_kbps}:vbv-bufsize={bitrate_kbps}",
        }
        ctx.open()
        self._ctx = ctx
        self._normalizer = AccessUnitNormalizer(None)

    def encode(
        self, frame: av.video.frame.VideoFrame, pts: float
    ) -> list[tuple[bytes, float, bool]]:
        """Encode one frame; returns [(annexb access unit, pts seconds, keyframe)]."""
        if (
            frame.width != self.width
            or frame.height != self.height
            or frame.format.name != "yuv420p"
        ):
            frame = frame.reformat(self.width, self.height, "yuv420p")
        frame.pts = round(pts * 90000)
        frame.time_base = Fraction(1, 90000)
        out = []
        for packet in self._ctx.encode(frame):
            data, idr = self._normalizer.normalize(bytes(packet))
            out.append((data, float(packet.pts or 0) / 90000, idr or packet.is_keyframe))
        return out

    @property
    def parameter_sets(self) -> bytes:
        return self._normalizer.parameter_sets

    @property
    def profile(self) -> str:
        return self._normalizer.profile
