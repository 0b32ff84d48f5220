"""API gateway: is the platform API up, ready, erroring or slow?"""

from __future__ import annotations

import pytest

from labcheck.errors import NoData, ProbeBadResponse

READINESS = [
    pytest.param("db", marks=[pytest.mark.sev1, pytest.mark.database,
                              pytest.mark.scenario("db-connection-exhaustion")], id="db"),
    pytest.param("auth", marks=[pytest.mark.sev1, pytest.mark.auth,
                                pytest.mark.scenario("auth-failure")], id="auth"),
    pytest.param("storage", marks=[pytest.mark.sev2, pytest.mark.storage,
                                   pytest.mark.scenario("storage-failure")], id="storage"),
]


@pytest.mark.sev1
@pytest.mark.api_gateway
def check_health_answers_within_budget(api, settings, expect):
    attempt = api.health()
    budget = settings.health_budget_s
    ok = attempt.result is not None and attempt.result.status == 200 and attempt.result.elapsed_s <= budget
    # No answer at all (timed out, refused) is the API not answering: its own catalogue entry. An
    # answer that is not the API's own health body answered, but is not the API.
    silent = attempt.result is None and not isinstance(attempt.error, ProbeBadResponse)
    expect(ok, target=f"GET {attempt.url}", observed=attempt.describe(),
           threshold=f"HTTP 200 within {budget:g} s",
           condition="api_not_answering" if silent else None,
           evidence=attempt.result.exchange() if attempt.result else None)


@pytest.mark.parametrize("component", READINESS)
def check_readiness_reports_component_ok(api, component, expect):
    # The component's own status under its configured name (signals.readiness_*). Absent, unreadable,
    # a status neither ready nor failed, or the endpoint failing as a whole (no answer, a 5xx without
    # components: the API gateway checks own that) is UNKNOWN (judge raises); FAILED is the body
    # saying the component fails.
    ready = api.readiness()
    judged = ready.judge(component)
    expect(judged.ok, target=judged.target, observed=judged.observed, threshold=judged.threshold,
           evidence=ready.evidence)


@pytest.mark.sev1
@pytest.mark.api_gateway
@pytest.mark.scenario("high-error-rate")
def check_api_is_not_failing_most_requests(api, settings, expect):
    rates = api.rates()
    limit = settings.error_ratio_sev1
    expect(rates.overall < limit, target=_ratio_target(rates),
           observed=f"{rates.overall:.1%}", threshold=f"< {limit:.0%} (the API is unavailable at or above it)",
           detail=_worst(rates))


@pytest.mark.sev2
@pytest.mark.api_gateway
@pytest.mark.scenario("high-error-rate")
def check_error_ratio_below_sev2(api, settings, expect):
    rates = api.rates()
    limit = settings.error_ratio_sev2
    expect(rates.overall <= limit, target=_ratio_target(rates),
           observed=f"{rates.overall:.1%}", threshold=f"<= {limit:.0%}", detail=_worst(rates))


@pytest.mark.sev3
@pytest.mark.api_gateway
@pytest.mark.scenario("high-error-rate")
def check_endpoint_error_ratio(api, api_endpoint, settings, expect):
    rates = api.rates()
    ratios = rates.ratios()
    label = rates.signals.endpoint_label
    if api_endpoint not in ratios:
        seen = ", ".join(sorted(ratios)[:10]) or "none"
        raise NoData(f"no requests with {label}={api_endpoint!r} in the last {rates.window} "
                     f"(endpoints seen: {seen})", target=f"Prometheus {rates.signals.requests}")
    limit = settings.endpoint_error_ratio_sev3
    expect(ratios[api_endpoint] <= limit, target=_ratio_target(rates, api_endpoint),
           observed=f"{ratios[api_endpoint]:.1%}", threshold=f"<= {limit:.0%}", detail=_worst(rates))


@pytest.mark.sev2
@pytest.mark.api_gateway
@pytest.mark.scenario("high-latency")
def check_p95_latency_below_threshold(api, settings, expect):
    p95 = api.p95_by_path()
    limit = settings.p95_latency_s
    judged = {path: q.judge(limit) for path, q in p95.items()}
    over = sorted((p for p, ok in judged.items() if ok is False), key=lambda p: p95[p].value, reverse=True)
    unclear = sorted(p for p, ok in judged.items() if ok is None)
    if not over and unclear:
        # histogram_quantile answers with the largest finite bucket when the quantile lies beyond it:
        # read as a value, that is a pass no bucket supports.
        largest = p95[unclear[0]].largest
        raise NoData(f"buckets end at {largest:g} s; p95 against {limit:g} s cannot be judged "
                     f"(p95 above {largest:g} s on {', '.join(unclear)})", target="API p95 latency")
    slow = sorted(p95.items(), key=lambda kv: (kv[1].beyond_buckets, kv[1].value), reverse=True)
    worst_path, worst = (over[0], p95[over[0]]) if over else slow[0]
    expect(not over, target=f"API p95 latency over {settings.window}",
           observed=f"{worst.describe()} on {worst_path}", threshold=f"<= {limit:g} s",
           detail="slowest endpoints: " + ", ".join(f"{p} {q.describe()}" for p, q in slow[:5]))


def _ratio_target(rates, endpoint=None):
    m = rates.signals
    where = f" on {endpoint}" if endpoint else ""
    return f"API 5xx ratio{where} over {rates.window} ({m.requests} by {m.endpoint_label}, {m.status_label})"


def _worst(rates):
    return "worst endpoints: " + ", ".join(f"{p} {r:.1%}" for p, r in rates.worst())
