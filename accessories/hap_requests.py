"""The pieces of a HAP characteristic request, checked: ids, query strings, write bodies, values.

Pure functions over what HAP-python's handler decoded (no driver, no I/O), used by
hap_access.CheckedAccessDriver (the rules per characteristic) and hap_http.CheckedHandler
(the HTTP answers). Two kinds of failure: ``BadRequest`` when the request as a whole cannot be
understood (no id can even be named: HTTP 400 with -70410), ``InvalidValue`` when one value
does not fit its characteristic (-70410 for that id). HAP-python's own check,
``Characteristic.to_valid_value``, clamps numbers and truncates strings instead of refusing
them; ``check_value`` refuses, and its messages describe the rule, never the value (a
SetupEndpoints value holds SRTP keys).
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass
from enum import IntEnum
from typing import Any
from urllib.parse import parse_qsl

from pyhap.characteristic import Characteristic

__all__ = [
    "MAX_ID",
    "BadRequest",
    "InvalidValue",
    "Status",
    "WriteItem",
    "check_value",
    "flag",
    "parse_char_id",
    "parse_read_query",
    "parse_write_request",
]

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


class ReadRefused(Exception):
    """A getter's refusal that is expected, not a fault (e.g. SelectedCameraRecordingConfiguration
    before the hub wrote one): the read answers -70402 and the log gets one debug line."""


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


def flag(value: Any) -> bool | None:
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
        as_bool = flag(value)
        if as_bool is None:
            raise InvalidValue("expected a boolean")
        return as_bool
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
