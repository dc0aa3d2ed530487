"""Audio format/rate/layout conversion without FFmpeg thread pools.

PyAV's `AudioResampler` builds an FFmpeg filter graph with the default thread count ("auto"):
every graph starts its own pool of threads (2 on this 2-core machine) for as long as it lives.
With one per HKSV recording, and a reference cycle keeping recordings' codecs alive until the
cycle collector ran, each recording with sound left 4 threads behind (test_hksv_e2e's thread
check). Audio conversion is a few hundred microseconds per second of sound: one thread, the
caller's, is plenty. This is the same abuffer → aformat → abuffersink graph with
`threads = 1`, built on the first frame (its format is only known then) and freed with
`close()`.

Not thread-safe: one instance per codec thread, like the codec contexts it sits between.
"""

from __future__ import annotations

import av
import av.audio.frame
import av.filter


class Resampler:
    """Converts decoded frames to `fmt` ("fltp", "s16", …), `layout` and `rate`."""

    def __init__(self, fmt: str, layout: str, rate: int) -> None:
        self.format, self.layout, self.rate = fmt, layout, rate
        self._graph: av.filter.Graph | None = None
        self._source: tuple[str, str, int] | None = None

    def resample(self, frame: av.audio.frame.AudioFrame) -> list[av.audio.frame.AudioFrame]:
        source = (frame.format.name, frame.layout.name, frame.sample_rate)
        if self._graph is None or source != self._source:
            self._build(frame)
            self._source = source
        assert self._graph is not None
        self._graph.push(frame)
        out: list[av.audio.frame.AudioFrame] = []
        while True:
            try:
                result = self._graph.pull()
            except (av.error.BlockingIOError, av.error.EOFError):
                break
            assert isinstance(result, av.audio.frame.AudioFrame)
            out.append(result)
        return out

    def _build(self, frame: av.audio.frame.AudioFrame) -> None:
        self.close()
        graph = av.filter.Graph()
        graph.threads = 1  # before any filter is added (FFmpeg's rule)
        extra = {"time_base": str(frame.time_base)} if frame.time_base is not None else {}
        source = graph.add(
            "abuffer",
            sample_rate=str(frame.sample_rate),
            sample_fmt=frame.format.name,
            channel_layout=frame.layout.name,
            **extra,
        )
        convert = graph.add(
            "aformat", sample_rates=str(self.rate), sample_fmts=self.format,
            channel_layouts=self.layout,
        )  # fmt: skip
        sink = graph.add("abuffersink")
        source.link_to(convert)
        convert.link_to(sink)
        graph.configure()
        self._graph = graph

    def close(self) -> None:
        self._graph = None
