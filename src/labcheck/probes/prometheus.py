"""Prometheus probe: instant and range PromQL queries, each sent once per run."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from labcheck.errors import NoData, NotConfigured, ProbeBadResponse
from labcheck.probes import http

if TYPE_CHECKING:
    from labcheck.lab import Lab


@dataclass(frozen=True)
class Sample:
    """One series of an instant vector."""

    labels: dict[str, str]
    value: float


def _base(lab: Lab) -> str:
    url = lab.settings.prometheus_url
    if not url:
        raise NotConfigured("prometheus_url is not configured", target="Prometheus")
    return str(url)


def _parse(result: http.HttpResult, expr: str) -> Any:
    target = f"Prometheus {result.url.split('/api/')[0]}"
    if result.status >= 500 or result.status in (401, 403, 404):
        raise ProbeBadResponse(f"HTTP {result.status} for query {expr}", target=target)
    doc = result.json()
    if not isinstance(doc, dict) or "status" not in doc:
        raise ProbeBadResponse(f"answer is not a Prometheus API response for {expr}", target=target)
    if doc["status"] != "success":
        raise ProbeBadResponse(
            f"query failed ({doc.get('errorType', 'error')}: {str(doc.get('error', ''))[:160]}): {expr}",
            target=target,
        )
    data = doc.get("data")
    if not isinstance(data, dict) or "result" not in data:
        raise ProbeBadResponse(f"answer has no data.result for {expr}", target=target)
    return data


def _query_url(lab: Lab, expr: str) -> str:
    return f"{_base(lab)}/api/v1/query?{urlencode({'query': expr})}"


def start(lab: Lab, *exprs: str) -> None:
    """Send instant queries in the background, so they run concurrently."""
    for expr in exprs:
        http.start(lab, _query_url(lab, expr), key=f"promql {expr}")


def query(lab: Lab, expr: str) -> list[Sample]:
    """An instant vector; NaN and Inf samples are dropped; may be empty."""
    base = _base(lab)
    result = http.get(lab, _query_url(lab, expr), key=f"promql {expr}")
    data = _parse(result, expr)
    if data.get("resultType") == "scalar":
        raw = [{"metric": {}, "value": data["result"]}]
    elif data.get("resultType") == "vector":
        raw = data["result"]
    else:
        raise ProbeBadResponse(f"unexpected result type {data.get('resultType')!r} for {expr}", target=base)
    samples = []
    for item in raw:
        try:
            value = float(item["value"][1])
        except (KeyError, IndexError, TypeError, ValueError):
            raise ProbeBadResponse(f"malformed sample in answer to {expr}", target=base) from None
        if math.isnan(value) or math.isinf(value):
            continue
        samples.append(Sample(labels=dict(item.get("metric") or {}), value=value))
    return samples


def query_range(lab: Lab, expr: str, *, start: float, end: float, step: float) -> list[dict[str, Any]]:
    """A range matrix: [{labels, values: [(ts, value)]}]; NaN/Inf points dropped."""
    base = _base(lab)
    params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
    url = f"{base}/api/v1/query_range?{urlencode(params)}"
    result = http.get(lab, url, key=f"promql-range {expr} {start:.0f} {end:.0f} {step:g}")
    data = _parse(result, expr)
    out = []
    for item in data.get("result") or []:
        points = []
        for ts, raw in item.get("values") or []:
            value = float(raw)
            if not (math.isnan(value) or math.isinf(value)):
                points.append((float(ts), value))
        out.append({"labels": dict(item.get("metric") or {}), "values": points})
    return out


def require(samples: list[Sample], expr: str, *, what: str) -> list[Sample]:
    """Empty means no data: UNKNOWN, never a pass."""
    if not samples:
        raise NoData(f"no data for {what} (query {expr} returned an empty vector)", target="Prometheus")
    return samples


def by_label(samples: list[Sample], label: str) -> dict[str, float]:
    """Samples keyed by one label's value."""
    return {s.labels.get(label, ""): s.value for s in samples}
