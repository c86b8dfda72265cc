"""The one number formatter: every table, message and plot prints its figures through here.

Figures get three significant digits and an auto-scaled unit: counts with decimal prefixes
(`1.23 M`, `187 k`), bytes the same with `B` (`46.7 MB`), seconds in ns/us/ms/s (`2.43 us`).
A column of a table takes one unit for all its rows (`unit_for` on its largest value), so the
figures of one column line up and compare at a glance.
"""
from __future__ import annotations

import math

PREFIXES = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, ""))
TIME_UNITS = ((1.0, "s"), (1e-3, "ms"), (1e-6, "us"), (1e-9, "ns"))


def sig3(value: float) -> str:
    """`value` with three significant digits, no exponent (1234 → '1230', 0.01234 → '0.0123')."""
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    digits = 2 - math.floor(math.log10(abs(value)))
    rounded = round(value, digits)
    digits = 2 - math.floor(math.log10(abs(rounded))) if rounded else digits  # 999.6 → 1000
    return f"{rounded:.{max(0, digits)}f}"


def _scaled(value: float, scales, floor: float) -> tuple[float, str]:
    """(factor, unit) of the largest scale that `value`, rounded to 3 digits, reaches."""
    v = abs(float(f"{value:.3g}")) if value else 0.0
    for factor, unit in scales:
        if v >= factor:
            return factor, unit
    return scales[-1] if floor else (1.0, scales[-1][1])


def count(value: float, unit: str = "") -> str:
    """A count with a decimal prefix: 1234567 → '1.23 M'; `unit` after the prefix ('46.7 MB')."""
    if value == 0:
        return f"0 {unit}".rstrip()
    factor, prefix = _scaled(value, PREFIXES, 1.0)
    if factor == 1.0 and float(value).is_integer():
        return f"{int(value)} {unit}".rstrip()
    return f"{sig3(value / factor)} {prefix}{unit}".rstrip()


def nbytes(value: float) -> str:
    """Bytes with a decimal prefix: 46740000 → '46.7 MB'."""
    return count(value, "B")


def seconds(value: float | None) -> str:
    """Seconds in the unit that suits them: 2.43e-6 → '2.43 us', 0.002001 → '2.00 ms'."""
    if value is None:
        return "-"
    if value == 0:
        return "0 s"
    factor, unit = _scaled(value, TIME_UNITS, 1.0)
    return f"{sig3(value / factor)} {unit}"


def time_unit(values) -> tuple[float, str]:
    """(factor, unit) for a column of seconds: the unit of its largest value."""
    top = max((abs(v) for v in values if v), default=0.0)
    return _scaled(top, TIME_UNITS, 1.0) if top else (1e-6, "us")


def count_unit(values) -> tuple[float, str]:
    """(factor, prefix) for a column of counts: the prefix of its largest value."""
    top = max((abs(v) for v in values if v), default=0.0)
    return _scaled(top, PREFIXES, 1.0) if top else (1.0, "")


def percent(part: float, whole: float) -> str:
    """`part` as a percentage of `whole`, three significant digits ('12.3%')."""
    return f"{sig3(100 * part / whole)}%" if whole else "-"


def ratio(value: float) -> str:
    """A ratio or a speedup: '1.23x'."""
    return f"{sig3(value)}x" if math.isfinite(value) else "inf"


def resource(value: float, resource_name: str) -> str:
    """A figure of one resource as `expand` and the adapters name them (macs, flops, size, latency)."""
    if resource_name == "latency":
        return seconds(value)
    return f"{count(value)} {RESOURCE_NAMES.get(resource_name, '')}".rstrip()


RESOURCE_NAMES = {"macs": "MACs", "flops": "FLOPs", "size": "params", "latency": "s"}
