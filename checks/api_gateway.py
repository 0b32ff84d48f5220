"""API gateway: is the platform API up, ready, erroring or slow?"""

from __future__ import annotations

import pytest

from labcheck.errors import ProbeBadResponse

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
    # The component's own status under its configured name (signals.readiness_*). Absent, unreadable
    # or a status neither ready nor failed is UNKNOWN (judge raises); FAILED is the body saying it
    # fails, or the endpoint itself failing (no answer, a 5xx without components: then the
    # condition picks the API's scenario, not this component's).
    ready = api.readiness()
    judged = ready.judge(component)
    expect(judged.ok, target=judged.target, observed=judged.observed, threshold=judged.threshold,
           condition=judged.condition, evidence=ready.evidence)


@pytest.mark.sev1
@pytest.mark.api_gateway
@pytest.mark.scenario("high-error-rate")
def check_api_is_not_failing_most_requests(api, settings, expect):
    rates = api.rates()
    limit = settings.error_ratio_sev1
    expect(rates.overall < limit, target=f"API 5xx ratio over {rates.window}",
           observed=f"{rates.overall:.1%}", threshold=f"< {limit:.0%} (the API is unavailable at or above it)",
           detail=_worst(rates))


@pytest.mark.sev2
@pytest.mark.api_gateway
@pytest.mark.scenario("high-error-rate")
def check_error_ratio_below_sev2(api, settings, expect):
    rates = api.rates()
    limit = settings.error_ratio_sev2
    expect(rates.overall <= limit, target=f"API 5xx ratio over {rates.window}",
           observed=f"{rates.overall:.1%}", threshold=f"<= {limit:.0%}", detail=_worst(rates))


@pytest.mark.sev3
@pytest.mark.api_gateway
@pytest.mark.scenario("high-error-rate")
def check_endpoint_error_ratio(api, api_endpoint, settings, expect):
    rates = api.rates()
    ratios = rates.ratios()
    if api_endpoint not in ratios:
        from labcheck.errors import NoData

        raise NoData(f"no requests to {api_endpoint} in the last {rates.window}", target="Prometheus")
    limit = settings.endpoint_error_ratio_sev3
    expect(ratios[api_endpoint] <= limit, target=f"API 5xx ratio on {api_endpoint} over {rates.window}",
           observed=f"{ratios[api_endpoint]:.1%}", threshold=f"<= {limit:.0%}", detail=_worst(rates))


@pytest.mark.sev2
@pytest.mark.api_gateway
@pytest.mark.scenario("high-latency")
def check_p95_latency_below_threshold(api, settings, expect):
    p95 = api.p95_by_path()
    limit = settings.p95_latency_s
    slow = sorted(p95.items(), key=lambda kv: kv[1], reverse=True)
    worst_path, worst = slow[0]
    expect(worst <= limit, target=f"API p95 latency over {settings.window}",
           observed=f"{worst:.2f} s on {worst_path}", threshold=f"<= {limit:g} s",
           detail="slowest endpoints: " + ", ".join(f"{p} {v:.2f} s" for p, v in slow[:5]))


def _worst(rates):
    return "worst endpoints: " + ", ".join(f"{p} {r:.1%}" for p, r in rates.worst())
