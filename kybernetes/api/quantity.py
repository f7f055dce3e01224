"""Kubernetes resource quantities ("250m", "1Gi", "1e3"): exact values and canonical strings.

A Quantity is an exact rational number plus the format it was written in
(DecimalSI, BinarySI or DecimalExponent). Parsing follows apimachinery's
resource.ParseQuantity, including rounding non-zero values up to the nearest
nano unit; `str()` gives the canonical form upstream serializes ("1000m" -> "1",
"1.5Gi" -> "1536Mi", "0.1" -> "100m"), which is what a stored object shows.
"""

from __future__ import annotations

import math
from fractions import Fraction
from functools import total_ordering
from typing import Any

DECIMAL_SI = "DecimalSI"
BINARY_SI = "BinarySI"
DECIMAL_EXPONENT = "DecimalExponent"

FORMAT_ERROR = "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
SUFFIX_ERROR = "unable to parse quantity's suffix"

_DEC_SUFFIXES = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_BIN_SUFFIXES = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DEC_BY_EXP = {v: k for k, v in _DEC_SUFFIXES.items()}
_BIN_BY_EXP = {0: "", **{v: k for k, v in _BIN_SUFFIXES.items()}}
_SUFFIX_CHARS = frozenset("eEinumkKMGTP")
_DIGITS = frozenset("0123456789")
_NANO = Fraction(1, 10**9)
# BinarySI values are capped like upstream's int64-backed maximum.
_MAX_BINARY = Fraction(2**63 - 1)


def _split(s: str) -> tuple[bool, str, str, str]:
    """Split into (positive, integer digits, fraction digits, suffix) as parseQuantityString does."""
    if not s:
        raise ValueError(FORMAT_ERROR)
    positive, pos, end = True, 0, len(s)
    if s[0] in "+-":
        positive = s[0] == "+"
        pos = 1
    start = pos
    while pos < end and s[pos] in _DIGITS:
        pos += 1
    num = s[start:pos]
    denom = ""
    if pos < end and s[pos] == ".":
        pos += 1
        dstart = pos
        while pos < end and s[pos] in _DIGITS:
            pos += 1
        denom = s[dstart:pos]
    suffix_start = pos
    while pos < end and s[pos] in _SUFFIX_CHARS:
        pos += 1
    if pos < end and s[pos] in "+-":
        pos += 1
    while pos < end and s[pos] in _DIGITS:
        pos += 1
    if pos != end:
        raise ValueError(FORMAT_ERROR)
    if suffix_start == start:
        # Nothing numeric before the suffix ("Gi", "-"): the documented regex needs [0-9.]+.
        raise ValueError(FORMAT_ERROR)
    return positive, num, denom, s[suffix_start:]


def _interpret(suffix: str) -> tuple[int, int, str]:
    """(base, exponent, format) for a suffix, or ValueError(SUFFIX_ERROR)."""
    if suffix in _BIN_SUFFIXES:
        return 2, _BIN_SUFFIXES[suffix], BINARY_SI
    if suffix in _DEC_SUFFIXES:
        return 10, _DEC_SUFFIXES[suffix], DECIMAL_SI
    if len(suffix) > 1 and suffix[0] in "eE":
        try:
            return 10, int(suffix[1:]), DECIMAL_EXPONENT
        except ValueError:
            pass
    raise ValueError(SUFFIX_ERROR)


def _round_up_nano(v: Fraction) -> Fraction:
    """Round away from zero to a multiple of 1e-9: asking for a tiny amount still gets some."""
    scaled = v / _NANO
    if scaled.denominator == 1:
        return v
    mag = math.ceil(abs(scaled))
    return Fraction(mag if v > 0 else -mag) * _NANO


def _remove_factors(n: int, base: int) -> tuple[int, int]:
    times = 0
    neg = n < 0
    n = abs(n)
    while n >= base and n % base == 0:
        n //= base
        times += 1
    return (-n if neg else n), times


# Parsed quantity strings: a pod's few distinct values ("100m", "64Mi") are parsed once, not on
# every create. Quantities are immutable, so one instance serves every caller. Bounded in entries
# and in the length of what is kept.
_PARSED: dict[str, Quantity] = {}
_PARSED_MAX = 4096
_PARSED_MAX_LEN = 64


@total_ordering
class Quantity:
    """An exact resource quantity with the format used to print it."""

    __slots__ = ("_str", "format", "value_exact")

    def __init__(self, value: Fraction | int | str = 0, format: str = DECIMAL_SI):
        self._str: str | None = None
        if isinstance(value, str):
            q = Quantity.parse(value)
            self.value_exact, self.format = q.value_exact, q.format
            return
        self.value_exact = Fraction(value)
        self.format = format

    @classmethod
    def parse(cls, s: Any) -> Quantity:
        """Parse a quantity string (or a JSON number, which upstream also accepts)."""
        if isinstance(s, Quantity):
            return s
        # Wrong JSON types are reported like malformed strings: callers turn ValueError into a field error.
        if isinstance(s, bool):
            raise ValueError(FORMAT_ERROR)  # noqa: TRY004
        if isinstance(s, int):
            return cls(Fraction(s), DECIMAL_SI)
        if isinstance(s, float):
            if not math.isfinite(s):
                raise ValueError(FORMAT_ERROR)
            s = repr(s)
        if not isinstance(s, str):
            raise ValueError(FORMAT_ERROR)  # noqa: TRY004
        q = _PARSED.get(s)
        if q is not None:
            return q
        q = cls._parse_string(s)
        if len(s) <= _PARSED_MAX_LEN:
            if len(_PARSED) >= _PARSED_MAX:
                _PARSED.clear()
            _PARSED[s] = q
        return q

    @classmethod
    def _parse_string(cls, s: str) -> Quantity:
        positive, num, denom, suffix = _split(s)
        base, exponent, fmt = _interpret(suffix)
        value = Fraction(int(num or "0") * 10 ** len(denom) + int(denom or "0"), 10 ** len(denom))
        value *= Fraction(base) ** exponent
        if not positive:
            value = -value
        value = _round_up_nano(value)
        if fmt == BINARY_SI:
            value = max(-_MAX_BINARY, min(_MAX_BINARY, value))
        return cls(value, fmt)

    # --- accessors ---------------------------------------------------------------------------------

    def is_zero(self) -> bool:
        return self.value_exact == 0

    def sign(self) -> int:
        return (self.value_exact > 0) - (self.value_exact < 0)

    def value(self) -> int:
        """The value rounded up (away from zero) to an integer, as Quantity.Value()."""
        return _ceil_away(self.value_exact)

    def milli_value(self) -> int:
        """The value in thousandths, rounded up (away from zero), as Quantity.MilliValue()."""
        return _ceil_away(self.value_exact * 1000)

    def scaled_value(self, exponent: int) -> int:
        """The value in units of 10**exponent, rounded up (away from zero)."""
        return _ceil_away(self.value_exact / Fraction(10) ** exponent)

    def as_float(self) -> float:
        return float(self.value_exact)

    # --- canonical string ------------------------------------------------------------------------------

    def __str__(self) -> str:
        # Quantities never change once made, so the canonical form is worked out once.
        s = self._str
        if s is None:
            s = self._str = self._canonical()
        return s

    def _canonical(self) -> str:
        v = self.value_exact
        if v == 0:
            return "0"
        fmt = self.format
        if fmt == BINARY_SI:
            # Small or fractional binary values would need rounding in base 1024; print them decimally.
            if -1024 < v < 1024 or v.denominator != 1:
                fmt = DECIMAL_SI
            else:
                amount, times = _remove_factors(v.numerator, 1024)
                return f"{amount}{_BIN_BY_EXP[times * 10]}" if times * 10 in _BIN_BY_EXP else \
                    f"{amount * 1024 ** (times - 6)}Ei"
        mantissa, exponent = _decimal_parts(v)
        # Canonical forms keep the exponent a multiple of three (milli, kilo, ...), growing the mantissa.
        shift = exponent % 3
        mantissa *= 10 ** shift
        exponent -= shift
        if fmt == DECIMAL_EXPONENT:
            return f"{mantissa}" if exponent == 0 else f"{mantissa}e{exponent}"
        if exponent > 18:
            mantissa *= 10 ** (exponent - 18)
            exponent = 18
        return f"{mantissa}{_DEC_BY_EXP[exponent]}"

    def __repr__(self) -> str:
        return f"Quantity({str(self)!r})"

    def to_json(self) -> str:
        return str(self)

    # --- arithmetic and comparison ----------------------------------------------------------------------

    def _coerce(self, other: Any) -> Fraction | None:
        if isinstance(other, Quantity):
            return other.value_exact
        if isinstance(other, (int, Fraction)) and not isinstance(other, bool):
            return Fraction(other)
        if isinstance(other, str):
            return Quantity.parse(other).value_exact
        return None

    def __eq__(self, other: object) -> bool:
        o = self._coerce(other)
        return NotImplemented if o is None else self.value_exact == o

    def __lt__(self, other: Any) -> bool:
        o = self._coerce(other)
        return NotImplemented if o is None else self.value_exact < o

    def __hash__(self) -> int:
        return hash(self.value_exact)

    def cmp(self, other: Any) -> int:
        o = self._coerce(other)
        if o is None:
            raise TypeError(f"cannot compare Quantity with {type(other).__name__}")
        return (self.value_exact > o) - (self.value_exact < o)

    def _result_format(self, other: Any) -> str:
        # Upstream keeps the receiver's format unless the receiver was zero.
        if self.value_exact == 0 and isinstance(other, Quantity):
            return other.format
        return self.format

    def __add__(self, other: Any) -> Quantity:
        o = self._coerce(other)
        if o is None:
            return NotImplemented
        return Quantity(self.value_exact + o, self._result_format(other))

    __radd__ = __add__

    def __sub__(self, other: Any) -> Quantity:
        o = self._coerce(other)
        if o is None:
            return NotImplemented
        return Quantity(self.value_exact - o, self._result_format(other))

    def __rsub__(self, other: Any) -> Quantity:
        o = self._coerce(other)
        if o is None:
            return NotImplemented
        return Quantity(o - self.value_exact, self.format)

    def __neg__(self) -> Quantity:
        return Quantity(-self.value_exact, self.format)

    def __mul__(self, n: int) -> Quantity:
        if not isinstance(n, int) or isinstance(n, bool):
            return NotImplemented
        return Quantity(self.value_exact * n, self.format)

    __rmul__ = __mul__

    def __bool__(self) -> bool:
        return self.value_exact != 0


def _ceil_away(v: Fraction) -> int:
    return math.ceil(v) if v >= 0 else -math.ceil(-v)


def _decimal_parts(v: Fraction) -> tuple[int, int]:
    """(mantissa, exponent) with v == mantissa * 10**exponent and no trailing zeros in the mantissa."""
    den = v.denominator
    exp = 0
    # Parsed quantities are multiples of 1e-9, so the denominator only has factors 2 and 5.
    while den != 1:
        v *= 10
        exp -= 1
        den = v.denominator
        if exp < -60:
            raise ValueError("quantity is not a finite decimal")
    mantissa, times = _remove_factors(v.numerator, 10)
    return mantissa, exp + times


def parse_quantity(s: Any) -> Quantity:
    return Quantity.parse(s)


def canonical(s: Any) -> str:
    """The canonical string form of a quantity string or number."""
    return str(Quantity.parse(s))


def is_valid(s: Any) -> bool:
    try:
        Quantity.parse(s)
    except ValueError:
        return False
    return True
