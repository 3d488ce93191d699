"""argparse ``type=`` converters that reject out-of-range numbers at parse time (exit 2, one line
from argparse naming the option), before anything is loaded."""
from __future__ import annotations

import argparse
import math


def _number(text: str, kind, what: str, ok) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if (kind is float and not math.isfinite(value)) or not ok(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _number(text, int, "an integer > 0", lambda v: v > 0)


def nonneg_int(text: str) -> int:
    return _number(text, int, "an integer >= 0", lambda v: v >= 0)


def positive_float(text: str) -> float:
    return _number(text, float, "a finite number > 0", lambda v: v > 0)


def nonneg_float(text: str) -> float:
    return _number(text, float, "a finite number >= 0", lambda v: v >= 0)
