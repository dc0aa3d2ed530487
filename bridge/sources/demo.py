"""`demo:` — a synthetic camera (a moving scene with a clock, and a beep) that works out of the box.

With `person=True` (`demo:person`, the no-config demo's camera) a photographed person walks
across the yard now and then (demo_scene.py), for the detector to find and the recorder to
record; off by default, so a `demo:` camera in a configuration (and the tests that read its
box and beeps) stays a scene nobody walks through.

Its sound (demo_sound.py) is on the video's clock like a camera's: AAC frame `k` has pts
k x 1024 / 16000 s, frame `n` of the video n / fps, both from the same start, and each audio
packet is handed over with the video frame during which it is due.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime

import av.video.frame
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from bridge.media.encoder import H264Encoder
from bridge.media.packet import AudioInfo, AudioPacket, StreamInfo
from bridge.sources.demo_scene import Visitor, Visits
from bridge.sources.demo_sound import DemoSound


class DemoInput:
    def __init__(
        self,
        width: int = 1280,
        height: int = 720,
        fps: float = 15.0,
        *,
        audio: bool = True,
        person: bool = False,
        visits: Visits | None = None,
    ) -> None:
        self.width, self.height, self.fps = width, height, fps
        self._person = person
        self._visits = visits
        self.visitor: Visitor | None = None
        self._encoder: H264Encoder | None = None
        self._closed = False
        self._audio = audio
        self._sound: DemoSound | None = None
        self.audio_info: AudioInfo | None = None
        self.audio_problem: str | None = None

    def open(self) -> StreamInfo:
        self._encoder = H264Encoder(self.width, self.height, self.fps, bitrate_kbps=1500)
        y = np.linspace(0, 1, self.height, dtype=np.float32)[:, None]
        x = np.linspace(0, 1, self.width, dtype=np.float32)[None, :]
        self._background = np.stack(
            [(40 + 60 * y + 0 * x), (70 + 80 * y + 0 * x), (120 + 60 * (1 - y) + 0 * x)], axis=-1
        ).astype(np.uint8)
        self._background[int(self.height * 0.7) :] = (60, 110, 50)  # the ground, drawn once
        if self._person:
            self.visitor = Visitor(self.width, self.height, self._visits)
        self._font = ImageFont.load_default(size=max(16, self.height // 12))
        if self._audio:
            self._sound = DemoSound()
            self.audio_info = self._sound.info
        self._start = time.monotonic()
        # Encode the first frame now so the stream's SPS/PPS are known when we report it.
        self._first = self._encoder.encode(self._render(0.0), 0.0)
        enc = self._encoder
        return StreamInfo(
            "h264", self.width, self.height, self.fps, enc.parameter_sets, enc.profile, 1500
        )

    def _render(self, t: float) -> av.video.frame.VideoFrame:
        img = self._background.copy()
        h, w = self.height, self.width
        ground = int(h * 0.7)
        # A "visitor" box walking across the yard, so motion and live view are visibly live.
        period = 12.0
        phase = (t % period) / period
        bw, bh = max(8, w // 16), max(16, h // 4)
        bx = int(-bw + phase * (w + bw))
        by = ground - bh
        x0, x1 = max(0, bx), min(w, bx + bw)
        if x1 > x0:
            img[by : by + bh, x0:x1] = (200, 80, 60)
        if self.visitor is not None:
            self.visitor.draw(img, t)  # in front of the box
        image = Image.fromarray(img)
        draw = ImageDraw.Draw(image)
        stamp = datetime.now().strftime("Obscura demo  %Y-%m-%d %H:%M:%S")
        draw.text((w // 40, h // 30), stamp, fill=(255, 255, 255), font=self._font)
        return av.video.frame.VideoFrame.from_image(image)

    def packets(self) -> Iterator[tuple[bytes, float, bool] | AudioPacket]:
        assert self._encoder is not None
        start = self._start
        yield from self._first
        n = 1
        k = 0  # the next audio frame
        while not self._closed:
            pts = n / self.fps
            delay = start + pts - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -1.0:
                # We fell behind (a busy machine): skip frames instead of drifting from real time.
                n = int((time.monotonic() - start) * self.fps)
                pts = n / self.fps
            if self._sound is not None:
                step = self._sound.frame_seconds
                k = max(k, int((pts - 1.0) / step))  # skipped frames: skip their sound too
                while k * step < pts:
                    yield AudioPacket(self._sound.packet(k), k * step, step)
                    k += 1
            yield from self._encoder.encode(self._render(pts), pts)
            n += 1

    def close(self) -> None:
        self._closed = True
