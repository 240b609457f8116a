"""Byte sizes as people write them (command line, pool files): 123, 512M, 2Gi."""

from __future__ import annotations

from tessera.errors import InvalidInput

_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def parse_bytes(field: str, text: str | int) -> int:
    s = str(text).strip()
    for unit in sorted(_UNITS, key=len, reverse=True):
        if unit and s.endswith(unit):
            number, factor = s[: -len(unit)], _UNITS[unit]
            break
    else:
        number, factor = s, 1
    try:
        value = int(float(number) * factor)
    except ValueError:
        raise InvalidInput(
            field, f"{text!r} is not a byte size (e.g. 536870912, 512Mi, 2G)"
        ) from None
    if value <= 0:
        raise InvalidInput(field, "must be positive")
    return value
