"""Who may read, write and subscribe to which characteristic: HAP's rules, a status per id.

HAP-python 5.2 serves characteristic reads and writes without looking at permissions: a paired
controller could write Name, Manufacturer, the supported stream configurations, MotionDetected
or StatusActive and the new value was kept and published; a write to an unknown aid/iid got
204 as if it had worked, an event subscription to anything was recorded, and a malformed id
raised inside the driver (HTTP 500, traceback in the log). Its own value check
(``Characteristic.to_valid_value``) clamps numbers and truncates strings instead of refusing
them, and a setter's ValueError becomes -70402 with a traceback.

``CheckedAccessDriver`` replaces the driver's ``get_characteristics``, ``set_characteristics``
and ``prepare`` with the rules of the HAP specification (R14, sections 6.7.2-6.7.4, as Apple's
HomeKit ADK applies them), without forking HAP-python:

- read only with ``pr`` (else -70405), write a value only with ``pw`` (else -70404), subscribe
  only with ``ev`` (else -70406); an unknown aid/iid is -70409; a row with neither value nor
  ev, a value of the wrong type or out of range (min/max, valid values, maxLen, the format's
  own range, base64 for data/tlv8), a plain write to a ``tw`` characteristic, a timed write
  whose prepare is unknown or expired, and a setter's ValueError (our TLV8 parsers) are -70410;
- each id gets its own status: 207 Multi-Status as soon as one id fails or a write response
  carries a value; all-success stays 200 (reads) / 204 (writes) as HAP-python answers;
- a request that is malformed as a whole (ids that are not ``aid.iid`` with positive 64-bit
  integers, a body that is not an object with a ``characteristics`` list of objects with
  integer aid/iid) raises ``BadRequest`` (hap_requests.py), answered 400 with -70410 by
  hap_http.py.

Write responses (``"r": true``) keep HAP-python's meaning: the setter's return value is sent
back when asked for (SetupEndpoints answers that way). Refusals by rule are logged at debug
level, a setter's ValueError (a malformed camera TLV) as one warning line; never with the value
written (a SetupEndpoints value holds SRTP keys).
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pyhap.accessory import Accessory, Bridge, get_topic
from pyhap.accessory_driver import AccessoryDriver
from pyhap.characteristic import Characteristic, CharacteristicError
from pyhap.service import Service

from .hap_requests import (
    MAX_ID,
    InvalidValue,
    ReadRefused,
    Status,
    WriteItem,
    check_value,
    flag,
    parse_char_id,
    parse_write_request,
)

__all__ = ["CheckedAccessDriver"]

logger = logging.getLogger(__name__)


def _lookup(top: Accessory | None, aid: int, iid: int) -> tuple[Accessory, Characteristic] | None:
    if top is None:
        return None
    if top.aid == aid:
        acc: Accessory | None = top
    elif isinstance(top, Bridge):
        acc = top.accessories.get(aid)
    else:
        acc = None
    if acc is None:
        return None
    char = acc.iid_manager.get_obj(iid)
    return (acc, char) if isinstance(char, Characteristic) else None


def _perms(char: Characteristic) -> tuple[str, ...]:
    return tuple(char.properties.get("Permissions", ()))


@dataclass
class _Write:
    row: dict[str, Any]
    acc: Accessory
    char: Characteristic
    value: Any
    respond: bool
    updates: dict[Characteristic, Any] = field(default_factory=dict)


class CheckedAccessDriver(AccessoryDriver):
    """An AccessoryDriver that enforces permissions and answers per id (see module doc)."""

    # id(characteristic) -> a check that raises ReadRefused when a read must fail (the
    # accessory listing still shows the stored value; only /characteristics reads are refused).
    read_guards: dict[int, Callable[[], None]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read_guards = {}

    def get_characteristics(self, char_ids: Iterable[str]) -> dict[str, Any]:
        rows = [self._read(*parse_char_id(text)) for text in char_ids]
        return {"characteristics": rows}

    def _read(self, aid: int, iid: int) -> dict[str, Any]:
        row: dict[str, Any] = {"aid": aid, "iid": iid}
        found = _lookup(self.accessory, aid, iid)
        if found is None:
            status = Status.NO_SUCH_RESOURCE
        elif "pr" not in _perms(found[1]):
            status = Status.WRITE_ONLY
        elif not found[0].available:
            status = Status.COMMUNICATION_FAILURE
        else:
            status = Status.SUCCESS
            try:
                guard = self.read_guards.get(id(found[1]))
                if guard is not None:
                    guard()
                row["value"] = found[1].get_value()
            except ReadRefused as exc:
                logger.debug("reading %d.%d refused: %s", aid, iid, exc)
                status = Status.COMMUNICATION_FAILURE
            except CharacteristicError as exc:
                logger.error("reading %d.%d failed: %s", aid, iid, exc)
                status = Status.COMMUNICATION_FAILURE
            except Exception:
                logger.exception("reading %d.%d failed", aid, iid)
                status = Status.COMMUNICATION_FAILURE
        row["status"] = int(status)
        return row

    def prepare(
        self, prepare_query: dict[str, Any], client_addr: tuple[str, int]
    ) -> dict[str, int]:
        """PUT /prepare (timed writes): a finite positive ttl in ms and an integer pid."""
        ttl = prepare_query.get("ttl") if isinstance(prepare_query, dict) else None
        pid = prepare_query.get("pid") if isinstance(prepare_query, dict) else None
        if (
            isinstance(ttl, bool)
            or not isinstance(ttl, int | float)
            or not 0 < ttl < math.inf
            or isinstance(pid, bool)
            or not isinstance(pid, int)
            or not 0 <= pid <= MAX_ID
        ):
            return {"status": int(Status.INVALID_VALUE)}
        return super().prepare({"ttl": ttl, "pid": pid}, client_addr)

    def _take_prepared(self, client_addr: tuple[str, int], pid: int) -> bool:
        expires = self.prepared_writes.get(client_addr, {}).pop(pid, None)
        return expires is not None and time.time() <= expires

    def set_characteristics(
        self, chars_query: dict[str, Any], client_addr: tuple[str, int]
    ) -> dict[str, Any] | None:
        items, pid = parse_write_request(chars_query)
        if not items:
            return None  # nothing to do, nothing to refuse
        rows = [{"aid": item.aid, "iid": item.iid, "status": 0} for item in items]
        timed = pid is not None
        if timed and not self._take_prepared(client_addr, pid):
            logger.debug("%s: timed write with an unknown or expired pid", client_addr)
            for row in rows:
                row["status"] = int(Status.INVALID_VALUE)
            return {"characteristics": rows}
        writes = []
        for item, row in zip(items, rows, strict=True):
            status, write = self._check_row(item, row, client_addr, timed)
            if status:
                row["status"] = int(status)
                logger.debug(
                    "%s: %d.%d refused: %s", client_addr, item.aid, item.iid, Status(status).name
                )
            elif write is not None:
                writes.append(write)
        self._apply(writes, client_addr)
        if all(row["status"] == 0 and "value" not in row for row in rows):
            return None
        return {"characteristics": rows}

    def _check_row(
        self, item: WriteItem, row: dict[str, Any], client_addr: tuple[str, int], timed: bool
    ) -> tuple[int, _Write | None]:
        found = _lookup(self.accessory, item.aid, item.iid)
        if found is None:
            return Status.NO_SUCH_RESOURCE, None
        acc, char = found
        perms = _perms(char)
        if not item.has_value and not item.has_ev:
            return Status.INVALID_VALUE, None
        if item.has_ev:
            ev = flag(item.ev)
            if ev is None:
                return Status.INVALID_VALUE, None
            if "ev" not in perms:
                return Status.NOTIFICATION_NOT_SUPPORTED, None
            self.async_subscribe_client_topic(client_addr, get_topic(item.aid, item.iid), ev)
        if not item.has_value:
            return Status.SUCCESS, None
        respond = flag(item.response)
        if "pw" not in perms:
            return Status.READ_ONLY, None
        if respond is None or ("tw" in perms and not timed):
            return Status.INVALID_VALUE, None
        try:
            value = check_value(char, item.value)
        except InvalidValue as exc:
            logger.debug("%s: %d.%d: %s", client_addr, item.aid, item.iid, exc)
            return Status.INVALID_VALUE, None
        return Status.SUCCESS, _Write(row, acc, char, value, respond)

    def _apply(self, writes: list[_Write], client_addr: tuple[str, int]) -> None:
        """Call the characteristics' setters, then service- and accessory-level setters (as
        HAP-python does). A ValueError is the controller's malformed value (-70410, one line);
        anything else is our bug (-70402, with its traceback)."""
        grouped: dict[Accessory, dict[Service, dict[Characteristic, _Write]]] = defaultdict(
            lambda: defaultdict(dict)
        )
        for write in writes:
            previous = write.char.value
            try:
                response = write.char.client_update_value(write.value, client_addr)
            except ValueError as exc:
                # HAP-python stores the value before calling the setter: a refused value
                # must not stay readable (e.g. a malformed SelectedRTPStreamConfiguration).
                write.char.value = previous
                write.row["status"] = int(Status.INVALID_VALUE)
                logger.warning(
                    "%s: rejected a malformed write to %s: %s",
                    client_addr, write.char.display_name, exc,
                )  # fmt: skip
                continue
            except Exception:
                write.row["status"] = int(Status.COMMUNICATION_FAILURE)
                logger.exception("%s: setting %s failed", client_addr, write.char.display_name)
                continue
            if write.respond and response is not None:
                write.row["value"] = response
            if write.char.service is not None:
                grouped[write.acc][write.char.service][write.char] = write
        for acc, services in grouped.items():
            failed = None
            if acc.setter_callback:
                updates = {
                    svc: {c: w.value for c, w in chars.items()} for svc, chars in services.items()
                }
                failed = _call_group(acc.setter_callback, updates, acc.display_name)
            for service, chars in services.items():
                status = failed
                if service.setter_callback:
                    values = {c.display_name: w.value for c, w in chars.items()}
                    status = (
                        _call_group(service.setter_callback, values, service.display_name) or failed
                    )
                for write in chars.values():
                    if status:
                        write.row["status"] = status


def _call_group(setter: Any, updates: Any, owner: str | None) -> int | None:
    """An accessory- or service-level setter (HAP-python calls them after the characteristics')."""
    try:
        setter(updates)
    except ValueError as exc:
        logger.warning("%s: setter rejected a write: %s", owner, exc)
        return int(Status.INVALID_VALUE)
    except Exception:
        logger.exception("%s: setter failed", owner)
        return int(Status.COMMUNICATION_FAILURE)
    return None
