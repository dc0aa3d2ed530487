"""Events → clips: fragmented MP4 remuxed from the camera's H.264, streamed to a sink."""

from bridge.record.clip import ClipMeta, ClipSink
from bridge.record.fmp4 import Fmp4Writer
from bridge.record.recorder import Recorder, RecordSettings

__all__ = ["ClipMeta", "ClipSink", "Fmp4Writer", "RecordSettings", "Recorder"]
