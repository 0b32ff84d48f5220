"""Reading the API's JSON bodies through the signal map: readiness components and the experiments list.

No I/O: each function takes a body already fetched (``http.Attempt``) and the map, and says what it
reads, what it could not read, and whether the endpoint itself failed. The rule (issue 12):

- a body without the expected shape is UNKNOWN ("could not read ..."), naming what was there;
- an absent component is UNKNOWN, naming the components present;
- FAILED comes only from the endpoint failing, or from the body itself saying a component fails.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from labcheck import signals
from labcheck.errors import NoData, ProbeBadResponse
from labcheck.probes import http
from labcheck.timefmt import parse_timestamp

MISSING = object()


def dig(doc: Any, path: str) -> Any:
    """The value at a dotted JSON path ('' = the document itself); ``MISSING`` when absent."""
    value = doc
    for key in (p for p in path.split(".") if p):
        if isinstance(value, Mapping) and key in value:
            value = value[key]
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            return MISSING
    return value


def shape_of(value: Any) -> str:
    """A short description of a JSON value, for "could not read" reasons."""
    if isinstance(value, Mapping):
        keys = ", ".join(str(k) for k in list(value)[:12]) + (" ..." if len(value) > 12 else "")
        return f"an object with keys {keys}" if value else "an empty object"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    return "null" if value is None else f"a {type(value).__name__} ({str(value)[:40]!r})"


def where(path: str, *rest: str) -> str:
    """``components.db.status``-style text for a target ('' path: the body)."""
    return ".".join(p for p in (path, *rest) if p) or "the body"


# --- readiness ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Judged:
    """One readiness component judged: ok, or not ok with what was observed."""

    ok: bool
    target: str
    observed: str
    threshold: str


@dataclass(frozen=True)
class Readiness:
    """The readiness endpoint's answer, read through the map (never raises: ``judge`` does)."""

    url: str
    map: signals.SignalMap
    http_status: int | None
    components: dict[str, Any] | None  # name -> state; None when the body could not be read
    unreadable: str | None = None  # why the components could not be read
    failure: str | None = None  # why the endpoint itself failed (no answer, 5xx without components)
    evidence: Any = field(default=None, repr=False)

    @property
    def threshold(self) -> str:
        return f"{self.map.readiness_status} one of {', '.join(sorted(self.map.ok_values))}"

    def target(self, component: str) -> str:
        name = self.map.readiness_name(component)
        return f"GET {self.url} {where(self.map.readiness_components, name)}"

    def judge(self, component: str) -> Judged:
        """The playbook component's state (``db``, ``auth``, ``storage``) under its configured name.

        FAILED (``ok`` False) when its status is a failed value; UNKNOWN (raised) when the endpoint
        failed as a whole, the body could not be read, the component is absent, or its status is
        neither an ok nor a failed value.
        """
        m = self.map
        target = self.target(component)
        if self.failure is not None:
            # The endpoint failed as a whole: it says nothing of this component, and a finding here
            # would be counted against the database, auth or storage. /health and the API's ratio
            # checks judge the endpoint itself.
            raise NoData(f"{self.failure}: the readiness endpoint failed as a whole and says nothing of "
                         f"{m.readiness_name(component)!r} (the API gateway checks judge the endpoint)",
                         target=target)
        if self.components is None:
            raise ProbeBadResponse(f"could not read the readiness components: {self.unreadable}", target=target)
        name = m.readiness_name(component)
        if name not in self.components:
            present = ", ".join(sorted(self.components)) or "none"
            raise NoData(f"no component {name!r} at {where(m.readiness_components)} (components present: "
                         f"{present}); set signals.readiness_{component} to its name", target=target)
        state = self.components[name]
        if isinstance(state, Mapping):
            if m.readiness_status not in state:
                raise ProbeBadResponse(f"could not read component {name!r}: no field {m.readiness_status!r} "
                                       f"({shape_of(state)}); set signals.readiness_status", target=target)
            status = state[m.readiness_status]
            detail = next((str(state[k]) for k in ("detail", "message", "error", "reason")
                           if state.get(k) not in (None, "")), "")
        else:
            status, detail = state, ""  # a bare "ok" / true is its own status
        text = str(status).strip().lower()  # True -> "true"
        observed = (f"{m.readiness_status} {status!r}" + (f" ({detail[:200]})" if detail else "")
                    + (f" in HTTP {self.http_status}" if self.http_status != 200 else ""))
        if text in m.ok_values:
            return Judged(True, target, observed, self.threshold)
        if text in m.failed_values:
            return Judged(False, target, observed, self.threshold)
        raise NoData(f"component {name!r} reports {m.readiness_status} {status!r}, neither a ready value "
                     f"({m.readiness_ok}) nor a failed one ({m.readiness_failed}); set signals.readiness_ok "
                     "or signals.readiness_failed", target=target)


def _components(value: Any) -> dict[str, Any] | None:
    """Components as name -> state: an object, or a list of objects with a ``name``."""
    if isinstance(value, Mapping):
        return {str(k): v for k, v in value.items()}
    if isinstance(value, list) and value and all(isinstance(i, Mapping) and "name" in i for i in value):
        return {str(i["name"]): i for i in value}
    return None


def read_readiness(attempt: http.Attempt, m: signals.SignalMap) -> Readiness:
    """Judge what the readiness endpoint answered.

    - no answer (refused, timed out, cut off): the endpoint failed (``judge`` is UNKNOWN for every
      component: the API gateway checks own it);
    - 2xx or 5xx whose body holds the components: each component is judged by its own status, so a
      503 naming the failing component fails that component, and only it;
    - 5xx without readable components: the endpoint failed, as above;
    - 2xx without readable components, 3xx or 4xx (401/403: labcheck's access; 404: the path):
      could not read, UNKNOWN.
    """
    ready = Readiness(url=attempt.url, map=m, http_status=None, components=None)
    result = attempt.result
    if result is None:
        reason = attempt.error.reason if attempt.error is not None else "no answer"
        return replace(ready, failure=f"no answer: {reason}")
    ready = replace(ready, http_status=result.status, evidence=result.exchange())
    components, why = None, ""
    try:
        doc = result.json()
    except ProbeBadResponse as exc:
        why = exc.reason
    else:
        found = dig(doc, m.readiness_components)
        components = _components(found)
        if components is None:
            at = where(m.readiness_components)
            seen = f"no {at!r}" if found is MISSING else f"{at} is {shape_of(found)}"
            why = f"HTTP {result.status}: {seen} in {shape_of(doc)}; set signals.readiness_components"
    if components is not None and (200 <= result.status < 300 or result.status >= 500):
        return replace(ready, components=components)
    if result.status >= 500:
        return replace(ready, unreadable=why, failure=f"HTTP {result.status} without readable components ({why})")
    if not 200 <= result.status < 300:
        hint = {401: "the endpoint wants credentials", 403: "the endpoint refuses labcheck",
                404: "no such endpoint; set signals.readiness_path"}.get(result.status, "not an answer to judge")
        why = f"HTTP {result.status} ({hint})"
    return replace(ready, unreadable=why)


# --- the experiments list ----------------------------------------------------------------------


@dataclass(frozen=True)
class Experiment:
    """One experiment read through the map."""

    id: Any
    name: Any
    state: Any
    progress: tuple[str, float] | None  # the first progress time field present, and its epoch
    raw: Mapping[str, Any] = field(repr=False)


def experiments_shape(m: signals.SignalMap) -> str:
    """The expected shape, for the check's threshold text."""
    item = ", ".join([m.experiments_id, m.experiments_name, m.experiments_state, "|".join(m.times)])
    return f"{{{m.experiments_key}: [{{{item}}}, ...]}}" if m.experiments_key else f"[{{{item}}}, ...]"


def read_experiments(doc: Any, m: signals.SignalMap) -> tuple[list[Experiment], list[str]]:
    """The experiments in a list body, and what could not be read (empty when all of it could)."""
    at = where(m.experiments_key)
    items = dig(doc, m.experiments_key)
    if not isinstance(items, list):
        seen = f"no {at!r}" if items is MISSING else f"{at} is {shape_of(items)}"
        return [], [f"{seen} in {shape_of(doc)}; set signals.experiments_key"]
    out: list[Experiment] = []
    problems: list[str] = []
    wanted = (m.experiments_id, m.experiments_name, m.experiments_state)
    for i, item in enumerate(items):
        label = f"{m.experiments_key or ''}[{i}]"
        if not isinstance(item, Mapping):
            problems.append(f"{label} is not an object")
            continue
        missing = [f for f in wanted if f not in item]
        if missing:
            problems.append(f"{label} lacks {', '.join(missing)} (has {', '.join(map(str, item)) or 'nothing'})")
            continue
        out.append(Experiment(item[m.experiments_id], item[m.experiments_name], item[m.experiments_state],
                              _progress(item, m.times), item))
    if problems:
        problems.append("set signals.experiments_id/_name/_state to the fields the API uses")
    return out, problems[:10]


def _progress(item: Mapping[str, Any], times: tuple[str, ...]) -> tuple[str, float] | None:
    """The first progress time field present and readable (ISO-8601 or epoch seconds)."""
    for name in times:
        value = item.get(name)
        if value in (None, ""):
            continue
        try:
            return name, parse_timestamp(value)
        except ValueError:
            return None
    return None


def running(experiments: list[Experiment], m: signals.SignalMap) -> list[Experiment]:
    values = {v.strip().lower() for v in m.experiments_running.split(",")}
    return [e for e in experiments if str(e.state).strip().lower() in values]
