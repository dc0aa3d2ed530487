"""Who may read, write and subscribe to which characteristic, and what a well-formed request is.

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
  integer aid/iid) raises ``BadRequest``, which ``hap_http`` answers 400 with -70410.

Write responses (``"r": true``) keep HAP-python's meaning: the setter's return value is sent
back when asked for (SetupEndpoints answers that way). Refusals are logged at debug level, in
one line, never with the value written (a SetupEndpoints value holds SRTP keys).
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any
from urllib.parse import parse_qsl

from pyhap.accessory import Accessory, Bridge, get_topic
from pyhap.accessory_driver import AccessoryDriver
from pyhap.characteristic import Characteristic, CharacteristicError
from pyhap.service import Service

__all__ = [
    "BadRequest",
    "CheckedAccessDriver",
    "Status",
    "check_value",
    "parse_char_id",
    "parse_read_query",
    "parse_write_request",
]

logger = logging.getLogger(__name__)

MAX_ID = 2**64 - 1  # aid and iid are 64-bit unsigned integers, starting at 1
_MAX_ID_DIGITS = 20
_DEFAULT_MAX_LEN = 64  # HAP's default maxLen for strings
_INT_RANGES = {
    "uint8": (0, 2**8 - 1),
    "uint16": (0, 2**16 - 1),
    "uint32": (0, 2**32 - 1),
    "uint64": (0, 2**64 - 1),
    "int": (-(2**31), 2**31 - 1),
}


class Status(IntEnum):
    """HAP status codes (spec table 6-11)."""

    SUCCESS = 0
    INSUFFICIENT_PRIVILEGES = -70401
    COMMUNICATION_FAILURE = -70402
    BUSY = -70403
    READ_ONLY = -70404
    WRITE_ONLY = -70405
    NOTIFICATION_NOT_SUPPORTED = -70406
    OUT_OF_RESOURCES = -70407
    TIMED_OUT = -70408
    NO_SUCH_RESOURCE = -70409
    INVALID_VALUE = -70410
    INSUFFICIENT_AUTHORIZATION = -70411


class BadRequest(ValueError):
    """The request as a whole is malformed (HTTP 400, HAP status -70410)."""


class InvalidValue(ValueError):
    """One value does not fit its characteristic (-70410 for that id)."""


# ---- ids and request shapes ----


def _id_from_text(text: str, what: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > _MAX_ID_DIGITS:
        raise BadRequest(f"{what} is not a positive integer: {text[:24]!r}")
    value = int(text)
    if not 1 <= value <= MAX_ID:
        raise BadRequest(f"{what} out of range: {text[:24]!r}")
    return value


def _id_from_json(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ID:
        raise BadRequest(f"{what} must be an integer from 1 to 2**64-1")
    return value


def parse_char_id(text: str) -> tuple[int, int]:
    """'2.10' -> (2, 10); anything else raises BadRequest."""
    if not isinstance(text, str):
        raise BadRequest("characteristic id must be text")
    aid, dot, iid = text.partition(".")
    if not dot:
        raise BadRequest(f"characteristic id is not aid.iid: {text[:48]!r}")
    return _id_from_text(aid, "aid"), _id_from_text(iid, "iid")


def parse_read_query(query: str) -> list[tuple[int, int]]:
    """The ids of ``GET /characteristics?id=1.2,1.3[&meta=1&perms=1&type=1&ev=1]``.

    Exactly one non-empty ``id`` parameter; the optional flags are accepted and ignored (as
    HAP-python does: it always answers with values only)."""
    try:
        params = parse_qsl(query, keep_blank_values=True, max_num_fields=16)
    except ValueError:
        raise BadRequest("too many query parameters") from None
    values = [value for key, value in params if key == "id"]
    if len(values) != 1 or not values[0]:
        raise BadRequest("exactly one non-empty id parameter is required")
    return [parse_char_id(part) for part in values[0].split(",")]


_ABSENT: Any = object()


@dataclass(frozen=True, slots=True)
class WriteItem:
    """One row of a PUT /characteristics body; ``value``/``ev``/``response`` as sent."""

    aid: int
    iid: int
    value: Any = _ABSENT
    ev: Any = _ABSENT
    response: Any = False

    @property
    def has_value(self) -> bool:
        return self.value is not _ABSENT

    @property
    def has_ev(self) -> bool:
        return self.ev is not _ABSENT


def parse_write_request(body: Any) -> tuple[list[WriteItem], int | None]:
    """Rows and timed-write id (``pid``) of a decoded PUT /characteristics body.

    Raises BadRequest when no row can be named (not an object, no ``characteristics`` list, a
    row that is not an object or lacks integer aid/iid, a ``pid`` that is not an integer)."""
    if not isinstance(body, dict):
        raise BadRequest("body is not a JSON object")
    rows = body.get("characteristics")
    if not isinstance(rows, list):
        raise BadRequest("characteristics must be a list")
    pid = body.get("pid")
    if pid is not None and (isinstance(pid, bool) or not isinstance(pid, int) or pid < 0):
        raise BadRequest("pid must be a non-negative integer")
    items = []
    for row in rows:
        if not isinstance(row, dict):
            raise BadRequest("a characteristics entry is not an object")
        items.append(
            WriteItem(
                aid=_id_from_json(row.get("aid"), "aid"),
                iid=_id_from_json(row.get("iid"), "iid"),
                value=row.get("value", _ABSENT),
                ev=row.get("ev", _ABSENT),
                response=row.get("r", False),
            )
        )
    return items, pid


def _flag(value: Any) -> bool | None:
    """A JSON boolean (or 0/1, which some controllers send); None when it is neither."""
    if isinstance(value, bool):
        return value
    if type(value) is int and value in (0, 1):
        return bool(value)
    return None


# ---- values ----


def check_value(char: Characteristic, value: Any) -> Any:
    """The value to store, or InvalidValue when it does not fit the characteristic's format,
    range, valid values or length. Messages describe the rule, never the value."""
    props = char.properties
    fmt = props.get("Format")
    if value is None:
        raise InvalidValue("null value")
    if fmt == "bool":
        flag = _flag(value)
        if flag is None:
            raise InvalidValue("expected a boolean")
        return flag
    if fmt in _INT_RANGES:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidValue(f"expected an integer ({fmt})")
        low, high = _INT_RANGES[fmt]
        _check_range(
            value, max(low, props.get("minValue", low)), min(high, props.get("maxValue", high))
        )
        valid = props.get("ValidValues")
        if valid and value not in valid.values() and not char.allow_invalid_client_values:
            raise InvalidValue("not one of the valid values")
        return value
    if fmt == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidValue("expected a number")
        if not math.isfinite(value):
            raise InvalidValue("expected a finite number")
        _check_range(value, props.get("minValue", -math.inf), props.get("maxValue", math.inf))
        return value
    if fmt == "string":
        if not isinstance(value, str):
            raise InvalidValue("expected a string")
        if len(value) > props.get("maxLen", _DEFAULT_MAX_LEN):
            raise InvalidValue("string longer than maxLen")
        return value
    if fmt in ("tlv8", "data"):
        if not isinstance(value, str):
            raise InvalidValue("expected a base64 string")
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidValue("not valid base64") from None
        return value
    return value  # array / dictionary: no rule we could check


def _check_range(value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise InvalidValue(f"outside {low:g}..{high:g}")


# ---- the driver ----


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
                row["value"] = found[1].get_value()
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
            ev = _flag(item.ev)
            if ev is None:
                return Status.INVALID_VALUE, None
            if "ev" not in perms:
                return Status.NOTIFICATION_NOT_SUPPORTED, None
            self.async_subscribe_client_topic(client_addr, get_topic(item.aid, item.iid), ev)
        if not item.has_value:
            return Status.SUCCESS, None
        respond = _flag(item.response)
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
            try:
                response = write.char.client_update_value(write.value, client_addr)
            except ValueError as exc:
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
