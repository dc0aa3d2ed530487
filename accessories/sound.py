"""The Microphone and Speaker services of a camera: Mute and Volume, as the Home app sets them.

HomeKit shows a camera's sound controls from these two services: a Microphone for a camera
whose sound we stream, a Speaker for one we can talk through (its back channel). Their values
live in a SoundLevel shared with the bridge (accessories.backend), which applies them to every
packet: a change reaches streams already running, no restart of the stream needed.

The values are not persisted: like a TV remote's mute, a restart brings the sound back on at
full volume rather than leaving a camera silently muted nobody remembers muting.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from .backend import SoundLevel

if TYPE_CHECKING:
    from pyhap.accessory import Accessory
    from pyhap.service import Service


def add_sound_service(
    accessory: Accessory, kind: Literal["Microphone", "Speaker"], level: SoundLevel
) -> Service:
    """Add a Microphone or Speaker service whose Mute and Volume drive `level`."""
    service = accessory.add_preload_service(kind, chars=["Volume"])

    def set_muted(value: Any) -> None:
        level.muted = bool(value)

    def set_volume(value: Any) -> None:
        level.volume = max(0, min(int(value), 100))

    service.configure_char("Mute", value=level.muted, setter_callback=set_muted)
    service.configure_char("Volume", value=level.volume, setter_callback=set_volume)
    return service
