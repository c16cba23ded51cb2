"""Strict JSON for what comes from elsewhere: no repeated key, no NaN or Infinity, bounded size and depth."""

from __future__ import annotations

import json
import math
from typing import Any


def strict_loads(data: str | bytes, what: str, *, max_chars: int = 1_000_000) -> Any:
    """Parse ``data`` (UTF-8 bytes or text); raise :class:`ValueError` naming ``what`` for anything JSON would bend.

    Refused: more than ``max_chars`` characters, bytes that are not UTF-8, a repeated key in an object
    (``json`` would keep the last one silently), ``NaN``/``Infinity`` and numbers that overflow to them,
    and nesting too deep to parse.
    """
    if isinstance(data, bytes | bytearray):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError as err:
            msg = f"{what} is not UTF-8 text (byte {err.start} is {data[err.start : err.start + 1]!r})"
            raise ValueError(msg) from None
    if not isinstance(data, str):
        msg = f"{what} must be JSON text, got {type(data).__name__}"
        raise ValueError(msg)
    if len(data) > max_chars:
        msg = f"{what} is {len(data)} characters of JSON, over the limit of {max_chars}"
        raise ValueError(msg)

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(pairs)
        if len(out) != len(pairs):
            keys = [k for k, _ in pairs]
            repeated = next(k for k in keys if keys.count(k) > 1)
            msg = f"{what} repeats the key {repeated[:80]!r}"
            raise ValueError(msg)
        return out

    def finite(token: str) -> float:
        value = float(token)
        if not math.isfinite(value):
            msg = f"{what} holds a non-finite number ({token[:40]})"
            raise ValueError(msg)
        return value

    def refuse(token: str) -> None:
        msg = f"{what} holds {token}, which is not JSON"
        raise ValueError(msg)

    try:
        return json.loads(data, object_pairs_hook=unique, parse_float=finite, parse_constant=refuse)
    except RecursionError:
        msg = f"{what} is nested too deeply"
        raise ValueError(msg) from None
    except ValueError as err:
        if str(err).startswith(what):
            raise
        msg = f"{what} is not valid JSON ({str(err)[:200]})"
        raise ValueError(msg) from None
