"""Strict checks of the explorer's request bodies: every problem is a :class:`RequestError` with
an HTTP status (400, or 413 for a body over :data:`MAX_BODY`) and a one-line message naming the
field and the fix. A body is a JSON object; unknown fields, wrong types (a bool is not a number),
numbers out of range and NaN/Infinity are refused. The checks know nothing of networks or mazes
beyond plain bounds: the sessions check squares against the maze and layers against the network."""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

MAX_BODY = 64 * 1024  # bytes of a request body
MAX_INT32 = 2**31 - 1  # seeds (procgen's and gymnasium's seeds fit a signed 32-bit int)


class RequestError(ValueError):
    """A request the explorer refuses: ``status`` (4xx) and a one-line message."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(one_line(message))
        self.status = status


def one_line(text: object, limit: int = 300) -> str:
    """``text`` on one line, at most ``limit`` characters (messages may quote client input)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[:limit - 1] + "…"


def _refuse_constant(name: str) -> float:
    raise RequestError(f"the body holds {name}, which is not a JSON number; send finite numbers")


def parse_json(raw: bytes) -> dict:
    """The JSON object of a request body; RequestError for a body over MAX_BODY, bytes that are
    not UTF-8 JSON, NaN/Infinity, or a value that is not an object."""
    if len(raw) > MAX_BODY:
        raise RequestError(f"request body of {len(raw)} bytes is over the {MAX_BODY // 1024} KiB limit", 413)
    if not raw.strip():
        raise RequestError("empty request body; send a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError("request body is not UTF-8 text; send a JSON object") from None
    try:
        body = json.loads(text, parse_constant=_refuse_constant)
    except RequestError:
        raise
    except RecursionError:
        raise RequestError("request body is nested too deeply; send a flat JSON object") from None
    except ValueError as exc:  # JSONDecodeError, and ints over Python's digit limit
        raise RequestError(f"request body is not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise RequestError(f"request body must be a JSON object, got {_kind(body)}")
    return body


# JSON type names for messages; bool before int, since a bool is an int in Python
_KINDS = ((type(None), "null"), (bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string"),
          (list, "an array"), (dict, "an object"))


def _kind(value: Any) -> str:
    """A JSON type name for messages."""
    return next((name for kind, name in _KINDS if isinstance(value, kind)), type(value).__name__)


# -- field checks: each takes (value, where) and returns the cleaned value ----------------------------
Check = Callable[[Any, str], Any]


def integer(low: int, high: int, odd: bool = False) -> Check:
    """An int in [low, high] (not a bool, not a float such as 3.0); ``odd``: odd only."""
    def check(value: Any, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RequestError(f"{where} must be an integer from {low} to {high}, got {_kind(value)}")
        if not low <= value <= high:
            raise RequestError(f"{where} must be from {low} to {high}, got {_short(value)}")
        if odd and value % 2 == 0:
            raise RequestError(f"{where} must be odd (mazes have odd sides), got {value}")
        return value
    return check


def number(low: float, high: float) -> Check:
    """A finite number (int or float, not a bool) in [low, high], as a float."""
    def check(value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RequestError(f"{where} must be a number from {low:g} to {high:g}, got {_kind(value)}")
        if isinstance(value, int) and abs(value) > 2**53:
            raise RequestError(f"{where} must be from {low:g} to {high:g}, got {_short(value)}")
        value = float(value)
        if not math.isfinite(value) or not low <= value <= high:
            raise RequestError(f"{where} must be from {low:g} to {high:g}, got {_short(value)}")
        return value
    return check


def boolean() -> Check:
    """true or false (not 0/1)."""
    def check(value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            raise RequestError(f"{where} must be true or false, got {_kind(value)}")
        return value
    return check


def text(max_length: int, min_length: int = 1) -> Check:
    """A string of min_length..max_length characters."""
    def check(value: Any, where: str) -> str:
        if not isinstance(value, str):
            raise RequestError(f"{where} must be a string, got {_kind(value)}")
        if not min_length <= len(value) <= max_length:
            raise RequestError(f"{where} must hold {min_length} to {max_length} characters, got {len(value)}")
        return value
    return check


def base64_bytes(max_bytes: int) -> Check:
    """A standard base64 string decoding to at most ``max_bytes`` bytes."""
    def check(value: Any, where: str) -> bytes:
        if not isinstance(value, str):
            raise RequestError(f"{where} must be a base64 string, got {_kind(value)}")
        try:
            data = base64.b64decode(value.encode("ascii"), validate=True)
        except (UnicodeEncodeError, binascii.Error, ValueError):
            raise RequestError(f"{where} is not valid base64; send the state bytes base64-encoded") from None
        if not data or len(data) > max_bytes:
            raise RequestError(f"{where} must decode to 1 to {max_bytes} bytes, got {len(data)}")
        return data
    return check


def array(item: Check, min_length: int, max_length: int, distinct: bool = False) -> Check:
    """A JSON array of min_length..max_length items, each passing ``item`` (as a tuple)."""
    def check(value: Any, where: str) -> tuple:
        if not isinstance(value, list):
            raise RequestError(f"{where} must be an array, got {_kind(value)}")
        if not min_length <= len(value) <= max_length:
            count = f"{min_length}" if min_length == max_length else f"{min_length} to {max_length}"
            raise RequestError(f"{where} must hold {count} items, got {len(value)}")
        items = tuple(item(entry, f"{where}[{index}]") for index, entry in enumerate(value))
        if distinct and len(set(items)) != len(items):
            raise RequestError(f"{where} must not repeat an item, got {_short(list(items))}")
        return items
    return check


def square() -> Check:
    """[x, y]: two integers (the session checks them against its maze)."""
    return array(integer(-10**6, 10**6), 2, 2)


@dataclass(frozen=True)
class Field:
    """One field of a schema: its check, whether it must be present, its default otherwise."""

    check: Check
    required: bool = False
    default: Any = None


@dataclass(frozen=True)
class Schema:
    """The fields a JSON object may hold; :meth:`check` returns them cleaned, defaults filled in."""

    fields: Mapping[str, Field]
    one_of: Sequence[str] = field(default_factory=tuple)  # exactly one of these must be present

    def check(self, body: Any, where: str = "body") -> dict:
        """The cleaned fields of ``body``; RequestError for anything the schema does not allow."""
        if not isinstance(body, dict):
            raise RequestError(f"{where} must be a JSON object, got {_kind(body)}")
        unknown = sorted(set(body) - set(self.fields))
        if unknown:
            allowed = ", ".join(self.fields)
            raise RequestError(f"{where} has unknown field(s) {', '.join(map(_short, unknown))}; "
                               f"allowed: {allowed}")
        if self.one_of:
            given = [name for name in self.one_of if name in body]
            if len(given) != 1:
                raise RequestError(f"{where} must hold exactly one of {', '.join(self.one_of)}, got "
                                   f"{len(given)}")
        out = {}
        for name, spec in self.fields.items():
            label = name if where == "body" else f"{where}.{name}"
            if name not in body:
                if spec.required:
                    raise RequestError(f"{where} is missing the field {name!r}")
                out[name] = spec.default
                continue
            out[name] = spec.check(body[name], label)
        return out


def _short(value: Any) -> str:
    """A value for a message, cut short (it comes from the client)."""
    text_form = repr(value)
    return text_form if len(text_form) <= 40 else text_form[:39] + "…"


def check_body(raw: bytes, schema: Schema) -> dict:
    """Parse and check one request body against ``schema``."""
    return schema.check(parse_json(raw))


def optional(check: Check, default: Any = None) -> Field:
    """An optional field."""
    return Field(check, False, default)


def required(check: Check) -> Field:
    """A required field."""
    return Field(check, True)


# -- the explorer's request bodies ------------------------------------------------------------------
ASCII_CHARS = 64 * 1024
STEER = Schema({"coefficient": required(number(-20.0, 20.0))})
RETARGET = Schema({
    "target": required(square()),
    "channels": optional(array(integer(0, 4096), 1, 256, distinct=True)),
    "value": optional(number(-1000.0, 1000.0)),
    "radius": optional(integer(0, 3), 0),
})
MAZE_NEW = Schema({"seed": required(integer(0, MAX_INT32)), "size": required(integer(3, 25, odd=True))})
MAZE_IMPORT = Schema({"ascii": optional(text(ASCII_CHARS)), "state": optional(base64_bytes(MAX_BODY))},
                     one_of=("ascii", "state"))
MAZE_EXPORT = Schema({"ascii": required(text(ASCII_CHARS))})
EDITS = {"steer": optional(STEER.check), "retarget": optional(RETARGET.check)}  # nested objects
MAZE_VIEW = Schema({"ascii": required(text(ASCII_CHARS)), "layer": optional(text(200)),
                    "channel": optional(integer(0, 4096), 0), **EDITS})
MAX_PLAY_STEPS = 500  # procgen maze's own episode limit
MAZE_PLAY = Schema({"ascii": required(text(ASCII_CHARS)), "greedy": optional(boolean(), False),
                    "seed": optional(integer(0, MAX_INT32), 0),
                    "max_steps": optional(integer(1, MAX_PLAY_STEPS), MAX_PLAY_STEPS), **EDITS})
MAX_RTG = 1000.0
MAX_DT_STEPS = 10_000  # the sessions bound steps further by the model's own step limit
DT_VIEW = Schema({"seed": required(integer(0, MAX_INT32)), "rtg": required(number(-MAX_RTG, MAX_RTG)),
                  "steps": optional(integer(0, MAX_DT_STEPS), 0)})
DT_PLAY = Schema({"seed": required(integer(0, MAX_INT32)), "rtg": required(number(-MAX_RTG, MAX_RTG)),
                  "max_steps": optional(integer(1, MAX_DT_STEPS)), "greedy": optional(boolean(), True)})


def check_square(value: Sequence[int], size: int, is_wall: Callable[[int, int], bool], where: str) -> tuple[int, int]:
    """(x, y) if it lies inside a ``size``×``size`` maze on an open square; RequestError otherwise."""
    x, y = int(value[0]), int(value[1])
    if not (0 <= x < size and 0 <= y < size):
        raise RequestError(f"{where} {[x, y]} is outside the {size}×{size} maze (x and y run 0..{size - 1}, "
                           "y = 0 at the bottom)")
    if is_wall(x, y):
        raise RequestError(f"{where} {[x, y]} is a wall; pick an open square")
    return x, y


def check_choice(value: Optional[str], choices: Sequence[str], where: str, default: str) -> str:
    """``value`` (``default`` when None) if it is one of ``choices``."""
    value = default if value is None else value
    if value not in choices:
        shown = ", ".join(list(choices)[:8]) + (", …" if len(choices) > 8 else "")
        raise RequestError(f"{where} {_short(value)} is not one of this network's: {shown}")
    return value
