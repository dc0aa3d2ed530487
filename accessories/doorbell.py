"""The Doorbell service of a camera accessory (a HomeKit Video Doorbell), and a ring's trigger.

What a controller sees (HAP-NodeJS's DoorbellController at 8804db5 and Scrypted's HomeKit
plugin build the same): a Doorbell service (121) whose ProgrammableSwitchEvent (73) reads as
null and is pushed as 0 (single press) on every ring; the iPhone then shows a ring notification
with a snapshot. The service is the accessory's primary service, which is what makes the Home
app present a camera as a doorbell; neither reference links it from another service (the
recording service links only the sensors, the RTP stream services link nothing), so we do not
either. A standalone camera server also advertises the Video Doorbell category (18).

HAP-python already treats ProgrammableSwitchEvent specially (characteristic.py, 5.2): its value
is always null (reads, the accessory listing) and its events are sent at once, outside the
0.5 s batch other events wait in. ``set_value(0)`` therefore pushes one event per ring (the
stored value goes back to null after each, so two rings are two events).

HomeKit Secure Video: a doorbell camera advertises the doorbell trigger (recording_tlv.py,
bit 2). A hub opens a recording on the ring, and a recording follows its trigger: without
motion it would end after the post-roll, so a ring keeps the trigger on for ``hold`` seconds
(``RingHold``), for a recording that is already running and for one the hub opens for the ring.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyhap.accessory import Accessory

logger = logging.getLogger(__name__)

SINGLE_PRESS = 0
RING_HOLD = 5.0  # seconds a ring keeps an HKSV recording's trigger on


class RingHold:
    """A trigger that is on for ``hold`` seconds after the last ring; ``changed()`` is called
    when it goes off (on the event loop)."""

    def __init__(self, hold: float, changed: Callable[[], None]) -> None:
        self.hold = hold
        self._changed = changed
        self._until = 0.0
        self._timer: asyncio.TimerHandle | None = None

    @property
    def active(self) -> bool:
        return time.monotonic() < self._until

    def start(self) -> None:
        self._until = time.monotonic() + self.hold
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(self.hold, self._over)

    def _over(self) -> None:
        self._timer = None
        self._changed()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._until = 0.0


class DoorbellService:
    """Adds the Doorbell service to ``accessory`` (append-only: call after every other
    service, HKSV's included, since HAP-python numbers IIDs in order)."""

    def __init__(self, accessory: Accessory) -> None:
        service = accessory.add_preload_service("Doorbell")
        self.service = service
        self._event = service.configure_char("ProgrammableSwitchEvent")
        accessory.set_primary_service(service)
        self.rings = 0

    def ring(self) -> None:
        """Push ProgrammableSwitchEvent = single press to every subscribed controller now."""
        self.rings += 1
        self._event.set_value(SINGLE_PRESS)  # immediate event; the value reads null again
