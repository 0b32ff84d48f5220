"""Kubernetes quantities read exactly: CPU in cores, memory in bytes, every suffix apimachinery knows."""

from __future__ import annotations

from fractions import Fraction

import pytest

from labcheck import quantity


@pytest.mark.parametrize(("text", "cores"), [
    ("250m", Fraction(1, 4)),
    ("1500000n", Fraction(3, 2000)),  # metrics-server writes nanocores
    ("251234567n", Fraction(251234567, 10**9)),
    ("1", Fraction(1)),
    ("2", Fraction(2)),
    ("0.5", Fraction(1, 2)),
    ("1.5", Fraction(3, 2)),
    (".25", Fraction(1, 4)),
    ("100u", Fraction(1, 10**4)),
    ("0", Fraction(0)),
    ("1e3", Fraction(1000)),
    ("5E-3", Fraction(5, 1000)),
    ("+2", Fraction(2)),
    (" 750m ", Fraction(3, 4)),
])
def test_cpu(text: str, cores: Fraction) -> None:
    assert quantity.cores(text) == cores


@pytest.mark.parametrize(("text", "size"), [
    ("128Mi", 128 * 2**20),
    ("123456Ki", 123456 * 1024),
    ("2Gi", 2 * 2**30),
    ("1.5Gi", 1610612736),
    ("1Ti", 2**40),
    ("1Pi", 2**50),
    ("1Ei", 2**60),
    ("1k", 1000),
    ("129M", 129 * 10**6),
    ("1G", 10**9),
    ("1T", 10**12),
    ("1P", 10**15),
    ("1E", 10**18),  # a bare E is exa, not an exponent
    ("129e6", 129 * 10**6),
    ("134217728", 134217728),
    ("0.5Ki", 512),
])
def test_memory(text: str, size: int) -> None:
    assert quantity.bytes_of(text) == size


@pytest.mark.parametrize("text", ["", "Mi", "12MB", "1.2.3", "1 Gi", "abc", "1e", "1Kb", "1mi", "--1", "1e999"])
def test_not_a_quantity_names_the_text(text: str) -> None:
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        quantity.parse(text)


def test_shown_as_kubectl_top_prints() -> None:
    assert quantity.show_cores(quantity.cores("251234567n")) == "251m"
    assert quantity.show_bytes(quantity.bytes_of("710008Ki")) == "693Mi"
