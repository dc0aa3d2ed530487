"""A clip's sound: the camera's audio as an AAC track on the event's timeline, shared by its parts.

docs/clip-format.md §4.1 says what the track is; this module makes it.

- **Copy or transcode.** A camera that sends AAC has its access units copied as they are, with
  its AudioSpecificConfig in the `esds`: no decode, no re-encode, nothing lost. Any other codec
  (G.711, Opus, MP3...), and AAC without its AudioSpecificConfig (ADTS, as MPEG-TS carries it),
  is decoded and resampled (bridge.media.camera_audio, the same input HKSV recordings use) and
  encoded as AAC-LC (bridge.media.aac), with silence where nothing was heard.
- **One clock.** Positions are audio samples on the event's timeline, whose 0 is one AAC frame
  before the event's first picture: the video's decode times are delayed by `video_delay`
  (1024 samples in 90 kHz ticks), so the frame that is sounding when the first picture shows
  is in the clip too, and an AAC decoder (which needs the frame before) or an encoder's priming
  frame is done by then; the sound starts with the picture, not a frame after it. A packet with
  source pts `t` sits at `(t - origin) x rate + delay (+ B-frame reorder delay)`, on the very
  clock the video's 90 kHz times come from (bridge.media.packet).
  Copied frames are laid end to end, so the track has no jitter; a frame more than `REANCHOR`
  from its own pts is placed there again (a gap: lost packets), or dropped when it would sound
  over the frames before it (a camera whose audio clock runs fast: one frame now and then).
- **Parts.** An event is sealed in parts (clip-format §8), each a worker thread of its own, so the
  sound is made once per event (one encoder, one layout) and handed out by position: part *n*
  takes the frames that start in `[A_n, A_n+1)`, `A_n = round(T_n x rate / 90000)` where `T_n`
  is where the part's video starts on the timeline in 90 kHz ticks (`A_0 = 0`: the first part
  also has the frame before its first picture). Every frame lands in exactly one part,
  so joined parts play the event's sound without a hole or a repeat at the joins, and each
  part alone plays its sound at the right time (its `tfdt` gets `A_n`, as its video's gets
  `T_n`).
- **Threads.** The loop only starts the input (subscribing from the prebuffer at the event's
  first picture, in the same turn as the video's pre-roll) and closes it once the event's last
  part is written. The parts' worker threads do the rest (waiting for late sound, decoding,
  encoding), one at a time under a lock: PyAV codec contexts are not thread-safe.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import av.container
import av.stream

from accessories.backend import CameraUnavailable
from bridge.media.aac import SAMPLE_RATES, AacPacket, AacTrack
from bridge.media.camera_audio import REANCHOR, CameraAudioInput
from bridge.media.fanout import AudioSubscription
from bridge.media.packet import AudioInfo, AudioPacket
from bridge.record.fmp4 import TIMESCALE

log = logging.getLogger(__name__)

#: Rates the AAC encoder takes (it is opened to write a copied track's header, see add_stream).
COPY_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)
AAC_FRAME = 1024  # samples per AAC-LC access unit
#: Frames made but not taken, kept at most this far (seconds) behind the newest part's start: a
#: part whose worker failed never takes its frames.
KEEP_SECONDS = 30.0


class EventAudio:
    """One event's AAC frames. `start`/`close` on the loop; the rest on the parts' workers."""

    def __init__(
        self,
        info: AudioInfo,
        subscribe: Callable[[float], AudioSubscription],
        *,
        name: str = "",
        transcode: bool = False,
        max_wait: float = 0.5,
    ) -> None:
        """`subscribe(since)`: the camera's audio from the prebuffer, from source pts `since`
        on. `transcode`: re-encode even AAC (what any other codec gets; tests, measurements)."""
        self.info = info
        self.name = name
        self.copy = (
            not transcode
            and info.codec == "aac"
            and bool(info.extradata)  # raw access units + their config (not ADTS, as in MPEG-TS)
            and info.sample_rate in COPY_RATES
            and info.channels in (1, 2)
        )
        if self.copy:
            self.rate, self.channels = info.sample_rate, info.channels
        else:
            wanted = min(max(info.sample_rate, 16000), SAMPLE_RATES[-1])
            self.rate = next(r for r in SAMPLE_RATES if r >= wanted)
            self.channels = min(max(info.channels, 1), 2)
        self.kbps = min(64, max(24, self.rate // 500)) * self.channels
        self.active = False  # started: the parts carry the track
        self._subscribe = subscribe
        self._max_wait = max_wait
        self._origin: float | None = None
        self._input: CameraAudioInput | None = None
        self._lock = threading.Lock()
        #: Ticks (90 kHz) from the timeline's 0 to the event's first picture: one AAC frame.
        self.video_delay = -(-AAC_FRAME * TIMESCALE // self.rate)
        self._lead: int | None = None  # samples from timeline 0 to the first picture's show
        self._track: AacTrack | None = None  # transcoding: the event's one encoder
        self._next: int | None = None  # copying: where the next frame goes
        self._made: list[AacPacket] = []  # frames not taken yet, by position
        self._start_floor = 0  # the newest part's first sample (for KEEP_SECONDS)
        self.frames = 0
        self.dropped = 0  # copied frames that would have overlapped the ones before
        self.gaps = 0  # copied frames placed again at their own pts after a gap

    def describe(self) -> dict[str, Any]:
        """For /status: how the event's sound goes into its clip."""
        return {
            "mode": "copy" if self.copy else "transcode",
            "from": self.info.describe(),
            "aac": f"AAC-LC {self.rate} Hz {'mono' if self.channels == 1 else 'stereo'}",
        }

    @classmethod
    def for_source(cls, source: object, *, transcode: bool = False) -> EventAudio | None:
        """The sound of an event of `source` (a CameraSource: `audio_info`,
        `subscribe_audio`), or None when it has none."""
        info = getattr(source, "audio_info", None)
        subscribe: Callable[..., AudioSubscription] | None = getattr(
            source, "subscribe_audio", None
        )
        if not isinstance(info, AudioInfo) or subscribe is None:
            return None

        def from_prebuffer(since: float) -> AudioSubscription:
            return subscribe(from_prebuffer=True, maxsize=4000, since=since)

        name = str(getattr(source, "name", ""))
        return cls(info, from_prebuffer, name=name, transcode=transcode)

    # -- loop side -------------------------------------------------------------------------

    def start(self, origin: float) -> None:
        """The event's first picture has source pts `origin`: subscribe from there on. Call it
        before that picture reaches a worker; a camera that cannot give its sound leaves the
        event's clips silent (video only)."""
        if self._input is not None:
            return
        self._origin = origin
        # (No closure here refers to self: the codecs go with the event, not with a cycle.)
        subscribe = self._subscribe
        self._input = CameraAudioInput(
            self.info, lambda: subscribe(origin), self.rate, self.channels,
            name=self.name, max_wait=self._max_wait, max_packets=6000,
        )  # fmt: skip
        self._input.follow_timeline(lambda: origin)
        try:
            self._input.start()
        except CameraUnavailable as exc:
            log.warning("camera %r: the clip has no sound: %s", self.name, exc)
            return
        self.active = True

    def close(self) -> None:
        """No more sound is wanted (the event's last part is written). Idempotent."""
        if self._input is not None:
            self._input.close()

    # -- worker side ----------------------------------------------------------------------------

    def add_stream(self, container: av.container.OutputContainer) -> av.stream.Stream:
        """The AAC stream of one part's muxer: the same parameters (so the same `moov`) for
        every part of the event."""
        with self._lock:
            if not self.copy:
                return self._transcoder().add_stream(container)
            layout = "mono" if self.channels == 1 else "stereo"
            stream = container.add_stream("aac", rate=self.rate, layout=layout)
            ctx = stream.codec_context
            ctx.format = "fltp"
            ctx.bit_rate = (self.info.bitrate_kbps or 0) * 1000
            stream.time_base = Fraction(1, self.rate)
            # PyAV opens a stream's codec when the header is written, and the `esds` gets that
            # encoder's configuration; opened now, it keeps the camera's, set after the open.
            # The encoder itself is never used.
            ctx.open()
            if self.info.extradata:
                ctx.extradata = self.info.extradata
            return stream

    def take(self, lo: int, hi: int, lead: int) -> list[AacPacket]:
        """The frames that start in [lo, hi) on the event's timeline (samples), each handed out
        once. Waits (up to `max_wait`) for sound that has not arrived yet. `lead`: samples from
        the first frame's decode time to its presentation (B-frames); the event's first call
        sets it."""
        with self._lock:
            if self._lead is None:
                self._lead = round(self.video_delay * self.rate / TIMESCALE) + lead
            self._start_floor = max(self._start_floor, lo)
            if self.copy:
                self._copy_until(hi)
            else:
                track = self._transcoder()
                track.input_offset = self._lead
                self._made += [
                    AacPacket(p.data, p.position, p.duration) for p in track.encode_until(hi)
                ]
            taken = [f for f in self._made if lo <= f.position < hi]
            floor = self._start_floor - round(KEEP_SECONDS * self.rate)
            self._made = [f for f in self._made if f.position >= hi or floor <= f.position < lo]
            self.frames += len(taken)
            return taken

    def _transcoder(self) -> AacTrack:
        if self._track is None:  # (without an input, never started: silence)
            self._track = AacTrack(self.rate, self.channels, self.kbps, self._input)
        return self._track

    def _copy_until(self, hi: int) -> None:
        origin = self._origin
        if origin is None or self._input is None or not self.active:
            return
        lead = self._lead or 0
        # Every frame that starts before `hi` has arrived once sound reaches its pts.
        for packet in self._input.packets(origin + (hi - lead) / self.rate):
            self._place(packet, origin, lead)

    def _place(self, packet: AudioPacket, origin: float, lead: int) -> None:
        length = round(packet.duration * self.rate) or AAC_FRAME
        own = round((packet.pts - origin) * self.rate) + lead
        if self._next is None or abs(own - self._next) > REANCHOR * self.rate:
            if self._next is not None and own < self._next:
                self.dropped += 1  # it would sound over frames already placed
                return
            if self._next is not None:
                self.gaps += 1
            self._next = own
        position, self._next = self._next, self._next + length
        if position >= 0:  # frames before the event's first picture are not part of it
            self._made.append(AacPacket(packet.data, position, length))

    def stats(self) -> dict[str, object]:
        return {
            "mode": "copy" if self.copy else "transcode",
            "rate": self.rate,
            "frames": self.frames,
            "dropped": self.dropped,
            "gaps": self.gaps,
            **(self._input.stats() if self._input is not None else {}),
        }


class PartAudio:
    """One part's share of its event's sound: the audio track an Fmp4Writer muxes (worker
    thread). Positions it returns are the part's own (its muxer starts both tracks at 0);
    `offset` is what the part's audio `tfdt`s get added to put them on the event's timeline,
    and `video_delay` what its video's get on top of the part's own offset."""

    def __init__(self, event: EventAudio, start_ticks: int, part: int) -> None:
        """`start_ticks`: where the part's first frame is, counted from the event's first."""
        self.event = event
        self.rate = event.rate
        self.video_delay = event.video_delay
        self._video_start = start_ticks + event.video_delay  # on the event's timeline
        self.offset = 0 if part == 0 else self._samples(self._video_start)  # A_n
        self._end: int | None = None  # A_n+1, once the next part's start is known
        self._taken = self.offset
        self.frames = 0

    def _samples(self, ticks: int) -> int:
        return round(ticks * self.rate / TIMESCALE)

    def end_at(self, ticks: int) -> None:
        """The next part of the event starts `ticks` (90 kHz) after the event's first frame."""
        self._end = self._samples(ticks + self.video_delay)

    def add_stream(self, container: av.container.OutputContainer) -> av.stream.Stream:
        return self.event.add_stream(container)

    def frames_until(self, video_end: int, lead: int, last: bool) -> list[AacPacket]:
        """The frames that start before the part's video ends (`video_end`, 90 kHz ticks from
        the part's start), or, at its last fragment, before the next part starts. `lead`: the
        part's B-frame reorder delay in ticks."""
        rate = self.rate
        hi = -(-(self._video_start + video_end) * rate // TIMESCALE)
        if last and self._end is not None:
            hi = self._end
        hi = max(hi, self._taken)
        frames = self.event.take(self._taken, hi, round(lead * rate / TIMESCALE))
        self._taken = hi
        self.frames += len(frames)
        return [AacPacket(f.data, f.position - self.offset, f.duration) for f in frames]
