"""The thread side of one HKSV recording: packets in, init segment and fragments out.

One thread per recording owns every codec context of it (H.264 decoder and x264 when
transcoding, the AAC encoder, the per-fragment muxers): PyAV contexts are not thread-safe, and
none of this CPU work may run on the event loop. The loop side (bridge/record/hksv.py) puts
packets and an `End` in the inbox and receives chunks through `send`; the thread returns (and
its codecs are freed) on `STOP`, on an `End` once the fragment in progress is flushed, or when
`stopped()` says nobody wants more.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from accessories.backend import RecordingChunk, RecordingFailed, RecordingRequest
from bridge.media.aac import AacTrack, AudioInput
from bridge.media.packet import StreamInfo, VideoPacket
from bridge.record.hksv_mux import FragmentWriter
from bridge.record.hksv_video import Fragmenter, Mode, RecordingTranscoder, frame_tolerance

log = logging.getLogger(__name__)

STOP = object()  # in the inbox: return at once, without flushing


@dataclass(frozen=True, slots=True)
class End:
    """In the inbox: flush the fragment in progress, then end (with `error` if not None).
    Sent back, after the last chunk, as the end of the recording."""

    error: RecordingFailed | None


Cuts = list[tuple[list[VideoPacket], float | None]]


class MediaWorker:
    def __init__(
        self,
        name: str,
        info: StreamInfo,
        request: RecordingRequest,
        mode: Mode,
        *,
        send: Callable[[RecordingChunk | End], bool],
        stopped: Callable[[], bool],
        audio: AudioInput | None = None,
        preset: str = "veryfast",
        start_at: float | None = None,
        catch_up_until: float | None = None,
    ) -> None:
        """`send` hands a chunk (or the end) to the loop, False when it is gone; `stopped()`
        is True once nothing more is wanted (closed, or failed on the loop side). `start_at`:
        a transcode outputs frames from this source pts on (it still decodes from the
        keyframe before it), so a long-GOP camera gives the hub its prebuffer, not the GOP."""
        self.name = name
        self._info, self._request, self._mode = info, request, mode
        self._send, self._stopped = send, stopped
        self._audio = audio if request.audio_active else None  # None: silence
        self._preset = preset
        self._start_at = start_at
        self._catch_up_until = catch_up_until  # the open: before it, short GOPs (transcode)
        self.inbox: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"hksv:{name}", daemon=True)
        # read by the loop (stats, lag)
        self.fragments = 0
        self.media_seconds = 0.0
        self.first_pts: float | None = None  # source pts of the first fragment's first frame
        self.done_pts: float | None = None  # the newest packet this thread is done with
        self.cpu_seconds = 0.0
        self.stats: dict[str, Any] = {}

    def start(self) -> None:
        self._thread.start()

    def put(self, item: object) -> None:
        self.inbox.put(item)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        started = time.thread_time()
        try:
            end = self._produce(started)
        except Exception as exc:
            log.exception("camera %r: HKSV media failed", self.name)
            end = End(RecordingFailed(f"media failure: {exc}"))
        finally:
            self.cpu_seconds = time.thread_time() - started
            # Break the cycle audio input -> fragment writer -> its AAC track -> audio input:
            # with it the codecs (and FFmpeg's threads) stayed until the cycle collector ran.
            follow = getattr(self._audio, "follow_timeline", None)
            if follow is not None:
                follow(lambda: None)
        if end is not None:
            self._send(end)

    def _produce(self, started: float) -> End | None:
        """The thread's loop; every codec lives (and dies) in here. None: stopped."""
        info, request = self._info, self._request
        transcoder: RecordingTranscoder | None = None
        width, height, fps = info.width, info.height, info.fps
        if self._mode == "transcode":
            transcoder = RecordingTranscoder(
                request, info.fps, preset=self._preset, start_at=self._start_at,
                catch_up_until=self._catch_up_until,
            )  # fmt: skip
            width, height, fps = transcoder.width, transcoder.height, transcoder.fps
        audio = AacTrack(
            request.audio_sample_rate,
            request.audio_channels,
            request.audio_bitrate_kbps,
            self._audio,
        )
        writer = FragmentWriter(width, height, fps, audio)
        # A camera's sound (bridge.media.camera_audio) places its samples on the recording's
        # timeline: sample 0 is the first video frame, whose pts the writer learns.
        follow = getattr(self._audio, "follow_timeline", None)
        if follow is not None:
            follow(lambda: writer.origin)
        # GOPs (the camera's, or ours of min(I-frame interval, fragment length)) grouped up
        # to the fragment length.
        fragmenter = Fragmenter(
            request.fragment_ms / 1000, frame_tolerance(fps),
            eager_until=self._catch_up_until if transcoder is not None else None,
        )  # fmt: skip
        while True:
            self.cpu_seconds = time.thread_time() - started
            self.stats = _stats(transcoder, fragmenter, writer)
            item = self.inbox.get()
            if item is STOP or self._stopped():
                return None
            if isinstance(item, VideoPacket):
                packets = [item] if transcoder is None else transcoder.push(item)
                self.done_pts = item.pts
                for packet in packets:
                    if not self._emit(writer, fragmenter.push(packet)):
                        return None
                continue
            assert isinstance(item, End)
            cuts: Cuts = []
            for packet in transcoder.flush() if transcoder is not None else []:
                cuts += fragmenter.push(packet)
            cuts += fragmenter.flush(1.0 / fps if fps > 0 else 1 / 30)
            self._emit(writer, cuts)
            self.stats = _stats(transcoder, fragmenter, writer)
            return item

    def _emit(self, writer: FragmentWriter, cuts: Cuts) -> bool:
        for packets, end_pts in cuts:
            if self._stopped():
                return False
            fragment = writer.write(packets, end_pts)
            if self.first_pts is None:
                self.first_pts = fragment.start
                assert writer.init is not None
                self._send(RecordingChunk("init", writer.init, 1))
            self.fragments += 1
            self.media_seconds += fragment.duration
            sequence = self.fragments + 1  # HDS dataSequenceNumber: the init segment is 1
            if not self._send(
                RecordingChunk("fragment", fragment.data, sequence, fragment.duration)
            ):
                return False
        return True


def _stats(
    transcoder: RecordingTranscoder | None, fragmenter: Fragmenter, writer: FragmentWriter
) -> dict[str, Any]:
    stats: dict[str, Any] = {
        "size": f"{writer.width}x{writer.height}",
        "long_fragments": fragmenter.long_fragments,
        "moov_changes": writer.moov_changes,
    }
    if transcoder is not None:
        stats.update(
            frames_decoded=transcoder.frames_decoded,
            frames_encoded=transcoder.frames_encoded,
            frames_skipped=transcoder.frames_skipped,
            decode_errors=transcoder.decode_errors,
        )
    return stats
