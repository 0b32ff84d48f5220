"""Kubernetes resource quantities at the floor: ``250m``, ``1500000n``, ``2``, ``128Mi``, ``1e3``, read exactly.

The grammar is apimachinery's ``resource.Quantity``: a signed decimal number, then one suffix: a
binary SI one (``Ki Mi Gi Ti Pi Ei``), a decimal SI one (``n u m "" k M G T P E``) or a decimal
exponent (``e3``, ``E-2``). Values are ``Fraction``s, so ``1500000n`` is exactly 3/2000 of a core
and ``1.5Gi`` exactly 1610612736 bytes; a float is made only where a ratio is computed.
"""

from __future__ import annotations

import re
from fractions import Fraction

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 10**3), "": Fraction(1),
            "k": Fraction(10**3), "M": Fraction(10**6), "G": Fraction(10**9), "T": Fraction(10**12),
            "P": Fraction(10**15), "E": Fraction(10**18)}
_NUMBER = re.compile(r"([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(.*)")
_EXPONENT = re.compile(r"[eE]([+-]?[0-9]+)")


def parse(text: str) -> Fraction:
    """The exact value of a quantity; ValueError naming the text when it is none."""
    value = str(text).strip()
    m = _NUMBER.fullmatch(value)
    if m is None:
        raise ValueError(f"not a Kubernetes quantity such as 250m, 1500000n, 128Mi or 2: {text!r}")
    number, suffix = Fraction(m.group(1)), m.group(2)
    if suffix in _BINARY:
        return number * _BINARY[suffix]
    if suffix in _DECIMAL:
        return number * _DECIMAL[suffix]
    exp = _EXPONENT.fullmatch(suffix)
    if exp is not None and abs(int(exp.group(1))) <= 30:
        return number * Fraction(10) ** int(exp.group(1))
    raise ValueError(f"not a Kubernetes quantity (unknown suffix {suffix!r}): {text!r}")


def cores(text: str) -> Fraction:
    """CPU in cores: ``250m`` is 1/4, ``1500000n`` 3/2000, ``2`` 2."""
    return parse(text)


def bytes_of(text: str) -> Fraction:
    """Memory in bytes: ``128Mi`` is 134217728, ``123456Ki`` 126418944, ``1G`` 10**9."""
    return parse(text)


def show_cores(value: Fraction | float) -> str:
    """Cores as ``kubectl top`` prints them: whole millicores (``973m``)."""
    return f"{round(float(value) * 1000)}m"


def show_bytes(value: Fraction | float) -> str:
    """Bytes as ``kubectl top`` prints them: whole mebibytes (``1843Mi``)."""
    return f"{round(float(value) / 2**20)}Mi"
