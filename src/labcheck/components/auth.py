"""Authentication seen from outside: the test-token request, the 401/403 ratio, the API's clock.

The ``auth_signals`` fixture and the ``secret_key`` parameter. The test-token request is shared with
the experiments component: both read the same GET /experiments, fetched once per run.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from labcheck import signals
from labcheck.components import _signals, parameter
from labcheck.components.api_gateway import Api
from labcheck.config import Settings
from labcheck.errors import NoData, NotConfigured, Unknown
from labcheck.lab import Lab, origin_of
from labcheck.prefetch import component, fact
from labcheck.probes import http, prometheus
from labcheck.timefmt import iso_z

TOKEN_TARGET = "labcheck's test token (the test_token setting)"


@dataclass(frozen=True)
class TokenTimes:
    """The validity window a JWT claims (``exp``, ``nbf``), read locally; never the token itself."""

    exp: float | None
    nbf: float | None

    def problem(self, now: float) -> str | None:
        """Why the token cannot be used at ``now`` (as an UNKNOWN reason), or None."""
        if self.exp is not None and now >= self.exp:
            return f"labcheck's test token expired at {iso_z(self.exp)}; renew it"
        if self.nbf is not None and now < self.nbf:
            return f"labcheck's test token is not valid before {iso_z(self.nbf)} (nbf); renew it or check this host's clock"
        return None


def token_times(token: str) -> TokenTimes:
    """``exp`` and ``nbf`` of a JWT's payload, decoded without verifying the signature.

    Raises Unknown ("test_token is not a JWT") for anything else; the reason never quotes the token.
    """
    parts = token.strip().split(".")
    if len(parts) != 3 or not all(parts[:2]):
        raise Unknown("test_token is not a JWT (expected three dot-separated base64url parts)", target=TOKEN_TARGET)
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        raise Unknown("test_token is not a JWT (its payload is not base64url JSON)", target=TOKEN_TARGET) from None
    if not isinstance(payload, dict):
        raise Unknown("test_token is not a JWT (its payload is not a JSON object)", target=TOKEN_TARGET)

    def seconds(claim: str) -> float | None:
        value = payload.get(claim)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Unknown(f"test_token is not a JWT ({claim} is not a NumericDate)", target=TOKEN_TARGET)
        return float(value)

    return TokenTimes(exp=seconds("exp"), nbf=seconds("nbf"))


def usable_token(token: str, now: float | None = None) -> str:
    """The token when its claims allow using it now; else Unknown naming why (expired, not yet valid, not a JWT)."""
    problem = token_times(token).problem(time.time() if now is None else now)
    if problem:
        raise Unknown(problem, target=TOKEN_TARGET)
    return token


def start_with_test_token(lab: Lab, api: Api) -> None:
    """Start GET /experiments with the test token in the background (the fact ``api.attempt`` reads)."""
    s = lab.settings
    if not (s.api_url and s.test_token):
        return
    try:
        usable_token(str(s.test_token))
    except Unknown:
        return  # never sent: the check reports why
    url = api.url("/experiments")
    http.start(lab, url, headers={"Authorization": f"Bearer {s.test_token}"}, key=f"GET {url} (with token)")


def with_test_token(lab: Lab, api: Api) -> http.Attempt:
    """GET /experiments with the configured test token, once per run; NotConfigured without one."""
    token = lab.settings.test_token
    if not token:
        raise NotConfigured("test_token is not configured (a valid bearer token for /experiments)",
                            target=api.url("/experiments"))
    # Read locally first: an expired token is labcheck's own problem, not the platform's.
    return api.attempt("/experiments", token=usable_token(str(token)))


@dataclass(frozen=True)
class Ratio:
    """401/403 responses as a share of all requests over a window."""

    window: str
    offset: str | None
    errors: float
    total: float
    bound: bool = False  # errors are all 4xx (status grouped into classes): an upper bound of 401/403
    signals: signals.SignalMap = field(default_factory=signals.SignalMap)

    @property
    def value(self) -> float:
        return self.errors / self.total


@dataclass(frozen=True)
class Skew:
    """The API's Date header against the local clock."""

    url: str
    skew_s: float
    date: str
    exchange: dict[str, Any] = field(repr=False)


@component("auth_signals", make=lambda lab: AuthSignals(lab, Api(lab)))
class AuthSignals:
    """Authentication as seen from outside: the 401/403 ratio and the API's clock."""

    def __init__(self, lab: Lab, api: Api) -> None:
        self.lab = lab
        self.api = api

    @fact(lambda auth, uses: start_with_test_token(auth.lab, auth.api))
    def with_test_token(self) -> http.Attempt:
        """GET /experiments with the configured test token (fetched once, shared with the experiments checks)."""
        return with_test_token(self.lab, self.api)

    def _exprs(self, m: signals.SignalMap, offset: str | None) -> tuple[str, str]:
        w = self.lab.settings.window
        off = f" offset {offset}" if offset else ""
        refused, _ = m.auth_refusals()
        status = m.labelled()[1]
        return (f"sum(rate({m.series(m.requests, status, refused)}[{w}]{off}))",
                f"sum(rate({m.series(m.requests, status)}[{w}]{off}))")

    # A check that names ``start`` compares with the configured baseline: started ahead with it.
    @fact(lambda auth, uses: auth._start_ratio(auth.lab.settings.auth_baseline_offset))
    def start(self, *offsets: str | None) -> None:
        _signals.start_queries(self.lab, f"401/403 ratio {offsets}",
                               lambda m: [q for offset in offsets for q in self._exprs(m, offset)])

    def _start_ratio(self, *offsets: str | None) -> None:
        if self.lab.settings.prometheus_url:
            self.start(None, *offsets)

    @fact(lambda auth, uses: auth._start_ratio())
    def error_ratio(self, offset: str | None = None) -> Ratio:
        """The 401/403 share of API requests over the window (``offset`` looks back in time).

        Where status is grouped into classes (``4xx``), 401/403 cannot be told from other 4xx: the
        ratio is then of all 4xx, an upper bound (``bound``).
        """
        m = _signals.resolved(self.lab)
        err_q, all_q = self._exprs(m, offset)
        prometheus.start(self.lab, err_q, all_q)
        when = f" {offset} earlier" if offset else ""
        totals = _signals.require_requests(self.lab, m, prometheus.query(self.lab, all_q),
                                           "API request rate", when)
        total = sum(s.value for s in totals)
        if total <= 0:
            raise NoData(f"no API requests in the {self.lab.settings.window} window{when}", target="Prometheus")
        errors = sum(s.value for s in prometheus.query(self.lab, err_q))
        return Ratio(self.lab.settings.window, offset, errors, total, bound=m.auth_refusals()[1], signals=m)

    def _start_clock(self) -> None:
        if self.lab.settings.api_url:
            key, fetch, url = self._clock_job()
            self.lab.start(key, fetch, origin=origin_of(url))

    @fact(lambda auth, uses: auth._start_clock())
    def clock_skew(self) -> Skew:
        """Date header of GET /health minus the local clock at the middle of the exchange."""
        key, fetch, url = self._clock_job()
        skew: Skew = self.lab.fact(key, fetch, target=url)
        return skew

    def _clock_job(self) -> tuple[str, Callable[[], Skew], str]:
        url = self.api.url("/health")

        def fetch() -> Skew:
            before = time.time()
            result = http.request(self.lab, url)
            after = time.time()
            skew = result.date_skew_s((before + after) / 2)
            if skew is None:
                raise NoData("the answer has no readable Date header", target=url)
            # Date has whole seconds, truncated: the server's clock was half a second later on average.
            return Skew(url, skew + 0.5, result.headers.get("date", ""), result.exchange())

        return f"clock skew GET {url}", fetch, url


@pytest.fixture(scope="session")
def auth_signals(lab: Lab, api: Api) -> AuthSignals:
    """The 401/403 ratio from Prometheus and the API's clock."""
    return AuthSignals(lab, api)


@parameter("secret_key")
def _secret_keys(metafunc: pytest.Metafunc, settings: Settings) -> Sequence[str]:
    return list(settings.secret_keys)
