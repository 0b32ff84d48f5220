"""Typed Kubernetes objects (pods, containers, nodes, events) from the API's JSON; a missing field stays None."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from labcheck.errors import NotConfigured
from labcheck.timefmt import human_age, parse_time

Obj = dict[str, Any]

# Waiting reasons of a container that cannot start or keeps dying.
CRASH_WAITING = ("CrashLoopBackOff",)
STARTUP_WAITING = ("ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError", "CreateContainerError",
                   "InvalidImageName", "RunContainerError")
BAD_WAITING = CRASH_WAITING + STARTUP_WAITING
NODE_PRESSURE = ("MemoryPressure", "DiskPressure", "PIDPressure")
REVISION = "deployment.kubernetes.io/revision"
NO_TERMINATION = "no previous termination"


def _obj(value: Any) -> Mapping[str, Any]:
    """``value`` when it is a JSON object, else an empty one (the API left the field out)."""
    return value if isinstance(value, Mapping) else {}


def _objs(value: Any) -> list[Mapping[str, Any]]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _int(value: Any) -> int | None:
    try:
        return None if value is None or isinstance(value, bool) else int(value)
    except (TypeError, ValueError):
        return None


def name_of(obj: Mapping[str, Any]) -> str:
    return str(_obj(obj.get("metadata")).get("name", "?"))


def labels_of(obj: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in _obj(_obj(obj.get("metadata")).get("labels")).items()}


# --- label selectors ---------------------------------------------------------------------------


_SET_TERM = re.compile(r"^\s*([A-Za-z0-9][-A-Za-z0-9_./]*)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_EQ_TERM = re.compile(r"^\s*([A-Za-z0-9][-A-Za-z0-9_./]*)\s*(==|!=|=)\s*([-A-Za-z0-9_.]*)\s*$")
_EXISTS_TERM = re.compile(r"^\s*(!?)\s*([A-Za-z0-9][-A-Za-z0-9_./]*)\s*$")

Requirement = Callable[[Mapping[str, str]], bool]


def _split_terms(selector: str) -> list[str]:
    terms, depth, current = [], 0, ""
    for ch in selector:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += ch
    terms.append(current)
    return [t for t in terms if t.strip()]


def _member(labels: Mapping[str, str], key: str, values: frozenset[str], negate: bool) -> bool:
    return (labels.get(key) in values) != negate


def _equals(labels: Mapping[str, str], key: str, value: str, negate: bool) -> bool:
    return (labels.get(key) == value) != negate


def _exists(labels: Mapping[str, str], key: str, negate: bool) -> bool:
    return (key in labels) != negate


def parse_selector(selector: str) -> list[Requirement]:
    """A label selector (``a=b,c!=d,e in (f,g),!h``) as predicates; NotConfigured when unreadable."""
    tests: list[Requirement] = []
    for term in _split_terms(selector):
        if m := _SET_TERM.match(term):
            values = frozenset(v.strip() for v in m.group(3).split(",") if v.strip())
            tests.append(functools.partial(_member, key=m.group(1), values=values, negate=m.group(2) == "notin"))
        elif m := _EQ_TERM.match(term):
            tests.append(functools.partial(_equals, key=m.group(1), value=m.group(3), negate=m.group(2) == "!="))
        elif m := _EXISTS_TERM.match(term):
            tests.append(functools.partial(_exists, key=m.group(2), negate=m.group(1) == "!"))
        else:
            raise NotConfigured(f"label selector {selector!r}: cannot read the term {term.strip()!r}",
                                target="Kubernetes label selector")
    if not tests:
        raise NotConfigured("the label selector is empty", target="Kubernetes label selector")
    return tests


def selector_text(selector: Mapping[str, Any]) -> str:
    """A deployment's ``spec.selector`` written as a label selector string."""
    terms = [f"{k}={v}" for k, v in sorted(_obj(selector.get("matchLabels")).items())]
    for expr in _objs(selector.get("matchExpressions")):
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In":
            terms.append(f"{key} in ({','.join(values)})")
        elif op == "NotIn":
            terms.append(f"{key} notin ({','.join(values)})")
        elif op == "Exists":
            terms.append(str(key))
        elif op == "DoesNotExist":
            terms.append(f"!{key}")
    return ",".join(terms)


# --- conditions and containers -----------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    """One ``status.conditions`` entry of a pod or node."""

    type: str | None
    status: str | None
    reason: str | None
    message: str | None

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Condition:
        return cls(*(_str(doc.get(k)) for k in ("type", "status", "reason", "message")))

    @property
    def is_true(self) -> bool:
        return self.status == "True"


def _conditions(obj: Mapping[str, Any]) -> tuple[Condition, ...]:
    return tuple(Condition.from_dict(c) for c in _objs(_obj(obj.get("status")).get("conditions")))


def _condition(conditions: Iterable[Condition], kind: str) -> Condition | None:
    """The condition of that type, if the object reports it."""
    return next((c for c in conditions if c.type == kind), None)


@dataclass(frozen=True)
class Termination:
    """A terminated container instance: ``state.terminated`` or ``lastState.terminated``."""

    reason: str | None
    exit_code: int | None
    signal: int | None
    started_at: str | None
    finished_at: str | None  # as the API wrote it: quoted in messages

    @classmethod
    def from_dict(cls, doc: Any) -> Termination | None:
        """None when the container reports no such termination."""
        if not isinstance(doc, Mapping) or not doc:
            return None
        return cls(reason=_str(doc.get("reason")), exit_code=_int(doc.get("exitCode")),
                   signal=_int(doc.get("signal")), started_at=_str(doc.get("startedAt")),
                   finished_at=_str(doc.get("finishedAt")))

    @property
    def finished(self) -> float | None:
        return parse_time(self.finished_at)

    @property
    def lifetime_s(self) -> float | None:
        """How long the instance ran; None when either end is unknown."""
        started, finished = parse_time(self.started_at), self.finished
        return None if started is None or finished is None else finished - started

    def age_text(self, now: float) -> str:
        """How long ago the instance finished (``12 min``), ``unknown age`` when it did not say."""
        return human_age(None if self.finished is None else now - self.finished)

    def describe(self) -> str:
        signal = f", signal {self.signal}" if self.signal else ""
        return (f"{self.reason or 'terminated'} (exit code {self.exit_code}{signal}) "
                f"finished {self.finished_at or 'at an unknown time'}")


@dataclass(frozen=True)
class ContainerStatus:
    """One container's status (init containers included: they can crash-loop too)."""

    name: str | None
    ready: bool
    restart_count: int  # required by the API; the kubelet reports 0 before the first restart
    state: str | None  # "waiting", "terminated", "running", or None when the API says nothing
    waiting_reason: str | None
    waiting_message: str | None
    running_since: str | None
    terminated: Termination | None  # the current instance, when it has terminated
    previous: Termination | None  # lastState.terminated: the instance before this one
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ContainerStatus:
        state = _obj(doc.get("state"))
        kind = next((k for k in ("waiting", "terminated", "running") if k in state), None)
        waiting = _obj(state.get("waiting"))
        return cls(name=_str(doc.get("name")), ready=bool(doc.get("ready")),
                   restart_count=_int(doc.get("restartCount")) or 0, state=kind,
                   waiting_reason=_str(waiting.get("reason")), waiting_message=_str(waiting.get("message")),
                   running_since=_str(_obj(state.get("running")).get("startedAt")),
                   terminated=Termination.from_dict(state.get("terminated")),
                   previous=Termination.from_dict(_obj(doc.get("lastState")).get("terminated")), raw=doc)

    @property
    def stuck(self) -> bool:
        """Waiting in a crash loop or unable to start (image, config)."""
        return self.waiting_reason in BAD_WAITING

    @property
    def crash_looping(self) -> bool:
        return self.waiting_reason in CRASH_WAITING

    @property
    def cannot_start(self) -> bool:
        return self.waiting_reason in STARTUP_WAITING

    @property
    def last_termination(self) -> Termination | None:
        """The current termination, else the previous one."""
        return self.terminated or self.previous

    @property
    def last_termination_reason(self) -> str | None:
        return None if self.last_termination is None else self.last_termination.reason

    @property
    def last_finished_at(self) -> float | None:
        return None if self.last_termination is None else self.last_termination.finished

    @property
    def last_lifetime_s(self) -> float | None:
        return None if self.last_termination is None else self.last_termination.lifetime_s

    @property
    def previous_finished_at(self) -> float | None:
        return None if self.previous is None else self.previous.finished

    def describe_last_termination(self) -> str:
        term = self.last_termination
        return term.describe() if term is not None else NO_TERMINATION

    def describe(self) -> str:
        """``api: waiting CrashLoopBackOff (back-off 40s ...), restarts 7, last Error (exit code 1) ...``."""
        if self.state == "waiting":
            now = f"waiting {self.waiting_reason or ''}".strip()
            if self.waiting_message:
                now += f" ({self.waiting_message[:160]})"
        elif self.state == "terminated":
            now = "terminated " + (self.terminated.describe() if self.terminated is not None else NO_TERMINATION)
        elif self.state == "running":
            now = f"running since {self.running_since or '?'}"
        else:
            now = "state unknown"
        text = f"{self.name}: {now}, {'ready' if self.ready else 'not ready'}, restarts {self.restart_count}"
        if self.previous is not None:
            text += f", last termination {self.previous.describe()}"
        return text


@dataclass(frozen=True)
class Container:
    """One container of a pod's spec (init containers included) and its resources."""

    name: str | None
    init: bool
    resources: Mapping[str, Any]

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], *, init: bool = False) -> Container:
        return cls(name=_str(doc.get("name")), init=init, resources=_obj(doc.get("resources")))

    def limit(self, kind: str) -> str | None:
        return _str(_obj(self.resources.get("limits")).get(kind))

    def request(self, kind: str) -> str | None:
        return _str(_obj(self.resources.get("requests")).get(kind))

    @property
    def missing_limits(self) -> list[str]:
        """``memory`` and/or ``cpu`` when the container declares no such limit."""
        return [kind for kind in ("memory", "cpu") if not self.limit(kind)]


# --- pods and nodes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Pod:
    """A pod: where it runs, its Ready condition, its containers and their statuses."""

    name: str
    node_name: str | None
    phase: str | None
    start_time: float | None
    labels: Mapping[str, str]
    conditions: tuple[Condition, ...]
    containers: tuple[Container, ...]  # init containers first
    statuses: tuple[ContainerStatus, ...]  # init containers first
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)  # for evidence

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Pod:
        spec, status = _obj(doc.get("spec")), _obj(doc.get("status"))
        containers = [Container.from_dict(c, init=True) for c in _objs(spec.get("initContainers"))]
        containers += [Container.from_dict(c) for c in _objs(spec.get("containers"))]
        statuses = _objs(status.get("initContainerStatuses")) + _objs(status.get("containerStatuses"))
        return cls(name=name_of(doc), node_name=_str(spec.get("nodeName")), phase=_str(status.get("phase")),
                   start_time=parse_time(status.get("startTime")), labels=labels_of(doc),
                   conditions=_conditions(doc), containers=tuple(containers),
                   statuses=tuple(ContainerStatus.from_dict(cs) for cs in statuses), raw=doc)

    @property
    def ready_condition(self) -> Condition | None:
        return _condition(self.conditions, "Ready")

    @property
    def ready(self) -> bool:
        """Ready=True; a pod that reports no Ready condition is not ready."""
        cond = self.ready_condition
        return cond is not None and cond.is_true

    def container(self, name: str | None) -> Container | None:
        return next((c for c in self.containers if c.name == name), None)

    def status_of(self, name: str | None) -> ContainerStatus | None:
        return next((cs for cs in self.statuses if cs.name == name), None)

    def describe(self) -> str:
        """One line: name, phase, Ready condition, node and each container's state."""
        ready = self.ready_condition
        why = (ready.reason if ready else None) or ""
        status = (ready.status if ready else None) or "unknown"
        parts = [f"pod {self.name}: phase {self.phase or '?'}", f"Ready={status}" + (f" ({why})" if why else ""),
                 f"node {self.node_name or 'unscheduled'}"]
        return "; ".join(parts + [cs.describe() for cs in self.statuses])

    def unhealthy(self, cutoff: float) -> bool:
        """Not Ready, a container stuck waiting, or a container that terminated since ``cutoff``."""
        if not self.ready:
            return True
        for cs in self.statuses:
            if cs.stuck:
                return True
            finished = cs.last_finished_at
            if finished is not None and finished >= cutoff and cs.restart_count > 0:
                return True
        return False

    def restarts_within(self, cs: ContainerStatus, events: Iterable[Event], cutoff: float) -> int:
        """Restarts of one container since ``cutoff``, never its lifetime total.

        Two sources, the larger wins: the kubelet's ``Started`` events for the container (aggregated
        with a count; an event that straddles the cutoff is prorated), minus the pod's first start when
        that lies in the window; and the previous instance's ``finishedAt`` (at least one restart when
        it ended in the window). Capped by ``restartCount``.
        """
        total = cs.restart_count
        if total <= 0:
            return 0
        started = 0
        for event in events_for(events, "Pod", self.name):
            path = event.field_path or ""
            if event.reason != "Started" or (path and not path.endswith(f"{{{cs.name}}}")):
                continue
            first, last, count = event.first, event.last, event.count
            if last is None or last < cutoff:
                continue
            if first is None or first >= cutoff or last <= first:
                started += count
            else:
                started += max(1, math.ceil(count * (last - cutoff) / (last - first)))
        if started and self.start_time is not None and self.start_time >= cutoff:
            started -= 1  # the container's first start is not a restart
        finished = cs.previous_finished_at
        floor = 1 if finished is not None and finished >= cutoff else 0
        return min(total, max(started, floor))


@dataclass(frozen=True)
class PodSelection:
    """The pods a deployment's selector matches, and how to name them in a message."""

    deployment: str
    selector: str
    namespace: str
    pods: tuple[Pod, ...]

    @property
    def target(self) -> str:
        return f"pods of deployment/{self.deployment} ({self.selector}) in namespace {self.namespace}"

    def __iter__(self) -> Iterator[Pod]:
        return iter(self.pods)

    def __len__(self) -> int:
        return len(self.pods)


@dataclass(frozen=True)
class Node:
    """A node and its conditions."""

    name: str
    conditions: tuple[Condition, ...]

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Node:
        return cls(name=name_of(doc), conditions=_conditions(doc))

    @property
    def problems(self) -> list[str]:
        """What is wrong with the node: Ready not True (or not reported), or a pressure condition True."""
        problems = []
        ready = _condition(self.conditions, "Ready")
        if ready is None or not ready.is_true:
            why = ": ".join(x for x in (ready.reason, ready.message) if x) if ready else ""
            status = (ready.status if ready else None) or "unknown"
            problems.append(f"Ready={status}" + (f" ({why[:200]})" if why else ""))
        for kind in NODE_PRESSURE:
            cond = _condition(self.conditions, kind)
            if cond is not None and cond.is_true:
                problems.append(f"{kind}=True" + (f" ({cond.reason})" if cond.reason else ""))
        return problems


# --- events ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """A core/v1 event, old style (first/last timestamp) or series style, about one object."""

    type: str | None
    reason: str | None
    message: str | None
    kind: str | None  # involvedObject
    name: str | None
    field_path: str | None
    first: float | None
    last: float | None
    count: int
    when: str  # as the API wrote it: lastTimestamp, else eventTime, else "?"

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Event:
        meta, series, obj = _obj(doc.get("metadata")), _obj(doc.get("series")), _obj(doc.get("involvedObject"))
        first = parse_time(doc.get("firstTimestamp")) or parse_time(doc.get("eventTime")) \
            or parse_time(meta.get("creationTimestamp"))
        last = parse_time(doc.get("lastTimestamp")) or parse_time(series.get("lastObservedTime")) or first
        return cls(type=_str(doc.get("type")), reason=_str(doc.get("reason")), message=_str(doc.get("message")),
                   kind=_str(obj.get("kind")), name=_str(obj.get("name")), field_path=_str(obj.get("fieldPath")),
                   first=first, last=last, count=_int(doc.get("count")) or _int(series.get("count")) or 1,
                   when=str(doc.get("lastTimestamp") or doc.get("eventTime") or "?"))

    def line(self) -> str:
        """``<when> Warning BackOff pod/api-1 (x5): Back-off restarting failed container``."""
        times = f" (x{self.count})" if self.count > 1 else ""
        return (f"{self.when} {self.type or ''} {self.reason or ''} "
                f"{(self.kind or '').lower()}/{self.name or ''}{times}: {self.message or ''}")


def by_last_seen(events: Iterable[Event]) -> list[Event]:
    """Oldest first; an event with no time sorts first."""
    return sorted(events, key=lambda e: e.last or 0.0)


def events_for(events: Iterable[Event], kind: str, name: str) -> list[Event]:
    """Events about one object, oldest first."""
    return by_last_seen(e for e in events if e.kind == kind and e.name == name)


# --- deployments and replicasets ---------------------------------------------------------------


def revision_of(obj: Mapping[str, Any]) -> int | None:
    """The ``deployment.kubernetes.io/revision`` annotation; None when absent or not a number."""
    return _int(_obj(_obj(obj.get("metadata")).get("annotations")).get(REVISION))


def owned_by(obj: Mapping[str, Any], kind: str, name: str) -> bool:
    return any(r.get("kind") == kind and r.get("name") == name
               for r in _objs(_obj(obj.get("metadata")).get("ownerReferences")))
