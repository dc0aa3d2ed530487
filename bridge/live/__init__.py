"""Live view: camera packets -> (copy | transcode) -> RTP/H.264 -> SRTP -> UDP to a controller."""

from bridge.live.policy import EncoderSettings, Mode, ModeSetting, choose_mode, encoder_settings
from bridge.live.session import H264LiveSession, LiveStats

__all__ = [
    "EncoderSettings",
    "H264LiveSession",
    "LiveStats",
    "Mode",
    "ModeSetting",
    "choose_mode",
    "encoder_settings",
]
