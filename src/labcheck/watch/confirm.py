"""Confirmation: when a check's failures count, when it has recovered, and when it is flapping.

A pure function of one check's recent outcomes (``failed``, ``passed``, ``unknown``; oldest
first) and whether it is already part of the incident:

- not yet confirmed: it is **flapping** when its outcome changed (failed <-> passed) at least twice
  in the last N rounds; else **confirmed** when it failed in at least K of the last N rounds,
  including the latest; else **pending** when it failed at all in those N rounds; else **ok**;
- confirmed: it has **recovered** after M consecutive passing rounds (an UNKNOWN round breaks the
  run: could not check is not a pass); else **flapping** as above, **recovering** when the latest
  round passed, **failing** otherwise.

So a check that alternates every round (failed, passed, failed, ...) is never confirmed with 2 of 3,
and an incident is never declared and resolved by the same flapping check.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

FAILED, PASSED, UNKNOWN = "failed", "passed", "unknown"
OK, PENDING, CONFIRMED, FLAPPING, FAILING, RECOVERING, RECOVERED = (
    "ok", "pending", "confirmed", "flapping", "failing", "recovering", "recovered")


@dataclass(frozen=True)
class Rule:
    """K of the last N rounds confirm a failure; M consecutive passing rounds confirm a recovery."""

    k: int = 2
    n: int = 3
    m: int = 2

    def __post_init__(self) -> None:
        if not 1 <= self.k <= self.n:
            raise ValueError(f"--confirm: K of N needs 1 <= K <= N, got {self.k} of {self.n}")
        if self.m < 1:
            raise ValueError(f"--recover: needs at least 1 passing round, got {self.m}")

    @property
    def keep(self) -> int:
        """How many recent outcomes the judgement reads."""
        return max(self.n, self.m)

    def text(self) -> str:
        return f"confirm {self.k} of {self.n}, recover after {self.m}"


def parse_rule(confirm: str, recover: int) -> Rule:
    """``--confirm 2/3`` (or ``2of3``) and ``--recover 2``; ValueError names the option."""
    k_text, sep, n_text = confirm.replace("of", "/").partition("/")
    try:
        if not sep:
            raise ValueError
        k, n = int(k_text), int(n_text)
    except ValueError:
        raise ValueError(f"--confirm: expected K/N such as 2/3, got {confirm!r}") from None
    return Rule(k, n, recover)


def changes(outcomes: Sequence[str]) -> int:
    """How often the outcome turned between failed and passed (UNKNOWN rounds are skipped)."""
    seen = [o for o in outcomes if o in (FAILED, PASSED)]
    return sum(1 for a, b in zip(seen, seen[1:], strict=False) if a != b)


def judge(outcomes: Sequence[str], *, confirmed: bool, rule: Rule) -> str:
    """The check's status after its latest round (see the module docstring)."""
    if not outcomes:
        return FAILING if confirmed else OK
    window = outcomes[-rule.n:]
    flapping = changes(window) >= 2
    if confirmed:
        tail = outcomes[-rule.m:]
        if len(tail) == rule.m and all(o == PASSED for o in tail):
            return RECOVERED
        if flapping:
            return FLAPPING
        return RECOVERING if outcomes[-1] == PASSED else FAILING
    if flapping:
        return FLAPPING
    failed = window.count(FAILED)
    if failed >= rule.k and outcomes[-1] == FAILED:
        return CONFIRMED
    return PENDING if failed else OK
