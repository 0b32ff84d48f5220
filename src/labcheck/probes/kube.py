"""Kubernetes probe: one read-only client per run, each list fetched once, failures as ProbeErrors."""

from __future__ import annotations

import functools
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from labcheck.errors import (
    NoData,
    NotConfigured,
    ProbeAuthError,
    ProbeBadResponse,
    ProbeError,
    ProbeRefused,
    ProbeTimeout,
    ProbeTLSError,
    ProbeUnreachable,
    Unknown,
)
from labcheck.timefmt import human_age, parse_time

if TYPE_CHECKING:
    from labcheck.lab import Lab

Obj = dict[str, Any]
T = TypeVar("T")

USER_AGENT = "labcheck (kubernetes-client/python)"
LIST_MAX_BYTES = 64 * 1024 * 1024  # a list bigger than this is refused, not read into memory
REVISION = "deployment.kubernetes.io/revision"
CHANGE_CAUSE = "kubernetes.io/change-cause"
CLIENT_FACT = "kube client"
CLIENT_SETUP_S = 30.0  # importing the client and loading credentials (an exec plugin) may take this long
LISTS = ("pods", "events", "nodes", "deployments", "replicasets")
LIST_PATHS = {
    "pods": "/api/v1/namespaces/{namespace}/pods",
    "events": "/api/v1/namespaces/{namespace}/events",
    "nodes": "/api/v1/nodes",
    "deployments": "/apis/apps/v1/namespaces/{namespace}/deployments",
    "replicasets": "/apis/apps/v1/namespaces/{namespace}/replicasets",
}
# Waiting reasons of a container that cannot start or keeps dying.
CRASH_WAITING = ("CrashLoopBackOff",)
STARTUP_WAITING = ("ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError", "CreateContainerError",
                   "InvalidImageName", "RunContainerError")
BAD_WAITING = CRASH_WAITING + STARTUP_WAITING
NODE_PRESSURE = ("MemoryPressure", "DiskPressure", "PIDPressure")


class KubeNotFound(ProbeBadResponse):
    """The object asked for does not exist (HTTP 404)."""


# --- time and selectors ------------------------------------------------------------------------


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


def _in(labels: Mapping[str, str], key: str, values: frozenset[str]) -> bool:
    return labels.get(key) in values


def _not_in(labels: Mapping[str, str], key: str, values: frozenset[str]) -> bool:
    return labels.get(key) not in values


def _equals(labels: Mapping[str, str], key: str, value: str) -> bool:
    return labels.get(key) == value


def _differs(labels: Mapping[str, str], key: str, value: str) -> bool:
    return labels.get(key) != value


def _exists(labels: Mapping[str, str], key: str, negate: bool) -> bool:
    return (key in labels) != negate


def parse_selector(selector: str) -> list[Requirement]:
    """A label selector (``a=b,c!=d,e in (f,g),!h``) as predicates; NotConfigured when unreadable."""
    tests: list[Requirement] = []
    for term in _split_terms(selector):
        if m := _SET_TERM.match(term):
            values = frozenset(v.strip() for v in m.group(3).split(",") if v.strip())
            member = _in if m.group(2) == "in" else _not_in
            tests.append(functools.partial(member, key=m.group(1), values=values))
        elif m := _EQ_TERM.match(term):
            compare = _differs if m.group(2) == "!=" else _equals
            tests.append(functools.partial(compare, key=m.group(1), value=m.group(3)))
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
    terms = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expr in selector.get("matchExpressions") or []:
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


def labels_of(obj: Mapping[str, Any]) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("labels") or {})


def name_of(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", "?"))


# --- reading pods ------------------------------------------------------------------------------


def condition(obj: Mapping[str, Any], kind: str) -> Obj | None:
    """The status condition of that type, if the object reports it."""
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return None


def pod_is_ready(pod: Mapping[str, Any]) -> bool:
    cond = condition(pod, "Ready")
    return bool(cond and cond.get("status") == "True")


def container_statuses(pod: Mapping[str, Any]) -> list[Obj]:
    """Init and app container statuses (init containers can crash-loop too)."""
    status = pod.get("status") or {}
    return [dict(cs) for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])]


def containers(pod: Mapping[str, Any]) -> list[Obj]:
    """Init and app containers of a pod spec."""
    spec = pod.get("spec") or {}
    return [dict(c) for c in (spec.get("initContainers") or []) + (spec.get("containers") or [])]


def container_spec(pod: Mapping[str, Any], name: str) -> Obj:
    return next((c for c in containers(pod) if c.get("name") == name), {})


def waiting(cs: Mapping[str, Any]) -> Obj | None:
    return (cs.get("state") or {}).get("waiting")


def last_termination(cs: Mapping[str, Any]) -> Obj | None:
    """The container's current termination, else its previous one."""
    state = cs.get("state") or {}
    return state.get("terminated") or (cs.get("lastState") or {}).get("terminated")


def lifetime_s(term: Mapping[str, Any] | None) -> float | None:
    """How long a terminated container instance ran."""
    started, finished = parse_time((term or {}).get("startedAt")), parse_time((term or {}).get("finishedAt"))
    return None if started is None or finished is None else finished - started


def describe_termination(term: Mapping[str, Any] | None) -> str:
    if not term:
        return "no previous termination"
    signal = f", signal {term['signal']}" if term.get("signal") else ""
    return (f"{term.get('reason') or 'terminated'} (exit code {term.get('exitCode')}{signal}) "
            f"finished {term.get('finishedAt') or 'at an unknown time'}")


def describe_container(cs: Mapping[str, Any]) -> str:
    """``api: waiting CrashLoopBackOff (back-off 40s ...), restarts 7, last Error (exit code 1) ...``."""
    state = cs.get("state") or {}
    if "waiting" in state:
        w = state["waiting"] or {}
        now = f"waiting {w.get('reason') or ''}".strip()
        if w.get("message"):
            now += f" ({str(w['message'])[:160]})"
    elif "terminated" in state:
        now = "terminated " + describe_termination(state["terminated"])
    elif "running" in state:
        now = f"running since {(state['running'] or {}).get('startedAt', '?')}"
    else:
        now = "state unknown"
    ready = "ready" if cs.get("ready") else "not ready"
    text = f"{cs.get('name')}: {now}, {ready}, restarts {cs.get('restartCount', 0)}"
    last = (cs.get("lastState") or {}).get("terminated")
    if last:
        text += f", last termination {describe_termination(last)}"
    return text


def describe_pod(pod: Mapping[str, Any]) -> str:
    """One line: name, phase, Ready condition, node and each container's state."""
    status = pod.get("status") or {}
    ready = condition(pod, "Ready") or {}
    why = ready.get("reason") or ""
    node = (pod.get("spec") or {}).get("nodeName") or "unscheduled"
    parts = [f"pod {name_of(pod)}: phase {status.get('phase', '?')}",
             f"Ready={ready.get('status', 'unknown')}" + (f" ({why})" if why else ""), f"node {node}"]
    parts += [describe_container(cs) for cs in container_statuses(pod)]
    return "; ".join(parts)


def node_problems(node: Mapping[str, Any]) -> list[str]:
    """What is wrong with a node: Ready not True, or a pressure condition True."""
    problems = []
    ready = condition(node, "Ready")
    if not ready or ready.get("status") != "True":
        why = ": ".join(str(x) for x in ((ready or {}).get("reason"), (ready or {}).get("message")) if x)
        problems.append(f"Ready={(ready or {}).get('status', 'unknown')}" + (f" ({why[:200]})" if why else ""))
    for kind in NODE_PRESSURE:
        cond = condition(node, kind)
        if cond and cond.get("status") == "True":
            problems.append(f"{kind}=True" + (f" ({cond['reason']})" if cond.get("reason") else ""))
    return problems


def pod_is_unhealthy(pod: Mapping[str, Any], cutoff: float) -> bool:
    """Not Ready, a container stuck waiting, or a container that terminated since ``cutoff``."""
    if not pod_is_ready(pod):
        return True
    for cs in container_statuses(pod):
        w = waiting(cs) or {}
        if w.get("reason") in BAD_WAITING:
            return True
        finished = parse_time((last_termination(cs) or {}).get("finishedAt"))
        if finished is not None and finished >= cutoff and int(cs.get("restartCount") or 0) > 0:
            return True
    return False


def memory_and_cpu(container: Mapping[str, Any]) -> dict[str, dict[str, str | None]]:
    resources = container.get("resources") or {}
    limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
    return {k: {"limit": limits.get(k), "request": requests.get(k)} for k in ("memory", "cpu")}


def event_times(event: Mapping[str, Any]) -> tuple[float | None, float | None, int]:
    """(first seen, last seen, count) of a core/v1 event, old style or series style."""
    meta = event.get("metadata") or {}
    series = event.get("series") or {}
    first = parse_time(event.get("firstTimestamp")) or parse_time(event.get("eventTime")) \
        or parse_time(meta.get("creationTimestamp"))
    last = parse_time(event.get("lastTimestamp")) or parse_time(series.get("lastObservedTime")) or first
    count = int(event.get("count") or series.get("count") or 1)
    return first, last, count


def events_for(events: Iterable[Mapping[str, Any]], kind: str, name: str) -> list[Obj]:
    """Events about one object, oldest first."""
    out = [dict(e) for e in events
           if (e.get("involvedObject") or {}).get("kind") == kind and (e.get("involvedObject") or {}).get("name") == name]
    return sorted(out, key=lambda e: event_times(e)[1] or 0.0)


def restarts_within(pod: Mapping[str, Any], cs: Mapping[str, Any], events: Iterable[Mapping[str, Any]],
                    cutoff: float) -> int:
    """Restarts of one container since ``cutoff``, never its lifetime total.

    Two sources, the larger wins: the kubelet's ``Started`` events for the container (aggregated
    with a count; an event that straddles the cutoff is prorated), minus the pod's first start when
    that lies in the window; and ``lastState.terminated.finishedAt`` (at least one restart when the
    previous instance ended in the window). Capped by ``restartCount``.
    """
    total = int(cs.get("restartCount") or 0)
    if total <= 0:
        return 0
    name = str(cs.get("name"))
    started = 0
    for event in events_for(events, "Pod", name_of(pod)):
        path = (event.get("involvedObject") or {}).get("fieldPath") or ""
        if event.get("reason") != "Started" or (path and not path.endswith(f"{{{name}}}")):
            continue
        first, last, count = event_times(event)
        if last is None or last < cutoff:
            continue
        if first is None or first >= cutoff or last <= first:
            started += count
        else:
            started += max(1, math.ceil(count * (last - cutoff) / (last - first)))
    pod_started = parse_time((pod.get("status") or {}).get("startTime"))
    if started and pod_started is not None and pod_started >= cutoff:
        started -= 1  # the container's first start is not a restart
    finished = parse_time(((cs.get("lastState") or {}).get("terminated") or {}).get("finishedAt"))
    floor = 1 if finished is not None and finished >= cutoff else 0
    return min(total, max(started, floor))


# --- rollouts ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Revision:
    """One entry of ``kubectl rollout history``: a replicaset of the deployment."""

    number: int
    replicaset: str
    images: tuple[str, ...]
    created: float | None
    change_cause: str
    replicas: int

    def as_dict(self, now: float) -> Obj:
        return {"revision": self.number, "replicaset": self.replicaset, "image": ", ".join(self.images),
                "created": datetime.fromtimestamp(self.created, UTC).isoformat() if self.created else None,
                "age_s": round(now - self.created) if self.created else None,
                "change_cause": self.change_cause, "replicas": self.replicas}


@dataclass(frozen=True)
class Rollout:
    """The newest revision of a deployment, when it rolled out, and how to go back."""

    deployment: str
    namespace: str
    revision: int
    previous_revision: int | None
    image: str
    started: float | None
    age_s: float | None

    @property
    def rollback(self) -> str | None:
        if self.previous_revision is None:
            return None
        return (f"kubectl rollout undo deployment/{self.deployment} -n {self.namespace} "
                f"--to-revision={self.previous_revision}")

    def fact(self) -> Obj:
        """The ``recent_rollout`` fact the verdict turns into a suspect."""
        return {"deployment": self.deployment, "revision": self.revision,
                "previous_revision": self.previous_revision, "age_s": None if self.age_s is None else round(self.age_s),
                "image": self.image, "rollback": self.rollback}


def _revision_of(obj: Mapping[str, Any]) -> int | None:
    value = ((obj.get("metadata") or {}).get("annotations") or {}).get(REVISION)
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _owned_by(obj: Mapping[str, Any], kind: str, name: str) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(r.get("kind") == kind and r.get("name") == name for r in refs)


# --- the probe ---------------------------------------------------------------------------------


def _status_message(exc: Any) -> str:
    """The ``message`` of the Status object an API error carries, else its reason phrase."""
    body = getattr(exc, "body", None)
    if body is None:
        resp = getattr(exc, "data", None)
        body = resp if isinstance(resp, str) else None
    try:
        doc = json.loads(body) if body else None
    except (TypeError, ValueError):
        doc = None
    if isinstance(doc, dict) and doc.get("message"):
        return str(doc["message"])[:300]
    return str(getattr(exc, "reason", "") or "no message")[:300]


class Kube:
    """The platform's Kubernetes namespace as the checks see it: each list fetched once per run.

    Transport is decided here, never by a check: the ``kubeconfig`` file (and ``kube_context``)
    when configured, else the pod's service account when ``in_cluster`` is set or
    ``KUBERNETES_SERVICE_HOST`` says we run in a cluster.
    """

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self._server: str | None = None

    # ---- where and how

    @property
    def namespace(self) -> str:
        return str(self.lab.settings.namespace)

    def _in_cluster(self) -> bool:
        return bool(self.lab.settings.in_cluster) or bool(os.environ.get("KUBERNETES_SERVICE_HOST"))

    @property
    def server(self) -> str:
        """The API server URL (read from the kubeconfig or the service environment; no network)."""
        if self._server is None:
            self._server = self._find_server()
        return self._server

    def _find_server(self) -> str:
        s = self.lab.settings
        if s.kubeconfig:
            try:
                import yaml

                with open(str(s.kubeconfig), encoding="utf-8") as fh:
                    doc = yaml.safe_load(fh) or {}
                wanted = s.kube_context or doc.get("current-context")
                ctx = next(c.get("context") or {} for c in doc.get("contexts") or [] if c.get("name") == wanted)
                cluster = next(c.get("cluster") or {} for c in doc.get("clusters") or []
                               if c.get("name") == ctx.get("cluster"))
                return str(cluster.get("server") or f"(kubeconfig {s.kubeconfig})")
            except Exception:  # noqa: BLE001 - loading the client reports the real problem
                return f"(kubeconfig {s.kubeconfig})"
        if self._in_cluster():
            host = os.environ.get("KUBERNETES_SERVICE_HOST", "kubernetes.default.svc")
            port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
            return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
        return "(not configured)"

    @property
    def target(self) -> str:
        """How failures name what we talked to: ends with the server URL (the lab's origin)."""
        return f"Kubernetes API {self.server}"

    def client(self) -> Any:
        """The run's ApiClient (kubernetes.client.ApiClient), built once."""
        return self.lab.client("kube", self._make_client)

    def _make_client(self) -> Any:
        s = self.lab.settings
        if not s.kubeconfig and not self._in_cluster():
            # Decided before the import: no Kubernetes target costs no kubernetes import.
            raise NotConfigured("no kubeconfig configured and not running in a cluster "
                                "(set kubeconfig, or in_cluster inside a pod)", target="Kubernetes API")
        from kubernetes.config.config_exception import ConfigException
        from kubernetes.config.incluster_config import load_incluster_config
        from kubernetes.config.kube_config import new_client_from_config

        from kubernetes import client

        configuration = client.Configuration()
        configuration.retries = 0  # one attempt per call: the lab's budget bounds the run, not retries
        try:
            if s.kubeconfig:
                api = new_client_from_config(  # type: ignore[no-untyped-call]
                    config_file=str(s.kubeconfig), context=s.kube_context or None, persist_config=False,
                    client_configuration=configuration)
            elif self._in_cluster():
                try:
                    load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
                except ConfigException as exc:
                    raise NotConfigured(f"in-cluster service account unusable: {exc}", target=self.target) from None
                api = client.ApiClient(configuration)
            else:
                raise NotConfigured("no kubeconfig configured and not running in a cluster "
                                    "(set kubeconfig, or in_cluster inside a pod)", target="Kubernetes API")
        except ConfigException as exc:
            raise ProbeAuthError(f"cannot load credentials from the kubeconfig: {exc}", target=self.target) from None
        api.user_agent = USER_AGENT
        return api

    # ---- one bounded request

    def _classify(self, exc: BaseException, what: str) -> ProbeError:
        import urllib3
        from kubernetes.client.exceptions import ApiException

        s = self.lab.settings
        target = self.target
        if isinstance(exc, ApiException):
            status = int(exc.status or 0)
            message = _status_message(exc)
            if status in (401, 403):
                return ProbeAuthError(f"{what}: HTTP {status} {exc.reason or ''}: {message}".replace("  ", " "),
                                      target=target)
            if status == 404:
                return KubeNotFound(f"{what}: HTTP 404: {message}", target=target)
            if status == 0:
                return ProbeTLSError(f"{what}: TLS failure ({str(exc.reason or '')[:160]})", target=target)
            return ProbeBadResponse(f"{what}: HTTP {status}: {message}", target=target)
        if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
            exc = exc.reason
        text = str(exc)
        if isinstance(exc, urllib3.exceptions.NewConnectionError):  # before ConnectTimeoutError: a subclass
            lowered = text.lower()
            if "refused" in lowered:
                return ProbeRefused(f"{what}: connection refused", target=target)
            if "resolve" in lowered or "name or service" in lowered or "nodename" in lowered:
                return ProbeUnreachable(f"{what}: DNS name does not resolve", target=target)
            return ProbeUnreachable(f"{what}: cannot connect ({text[:160]})", target=target)
        if isinstance(exc, urllib3.exceptions.ConnectTimeoutError):
            return ProbeTimeout(f"{what}: timed out after {s.connect_s:g} s connecting", target=target)
        if isinstance(exc, urllib3.exceptions.ReadTimeoutError | TimeoutError):
            return ProbeTimeout(f"{what}: timed out after {s.read_s:g} s waiting for a response", target=target)
        if isinstance(exc, urllib3.exceptions.SSLError):
            return ProbeTLSError(f"{what}: TLS certificate not trusted ({text[:160]})", target=target)
        if isinstance(exc, urllib3.exceptions.ProtocolError):
            return ProbeBadResponse(f"{what}: connection closed mid-response ({text[:160]})", target=target)
        if isinstance(exc, OSError):
            return ProbeUnreachable(f"{what}: {type(exc).__name__}: {text[:160]}", target=target)
        return ProbeBadResponse(f"{what}: {type(exc).__name__}: {text[:160]}", target=target)

    def _get(self, api: Any, path: str, params: Mapping[str, str], query: Sequence[tuple[str, Any]]) -> Any:
        """One raw GET through the client: its credentials, TLS, proxy and ``_request_timeout``.

        Made with ``ApiClient.param_serialize``/``call_api``, as the generated API classes do,
        without them: CoreV1Api and its pydantic models take over a second to import, which was
        most of a healthy run's time on two cores. Answers are read as JSON dicts, not models.
        """
        from kubernetes.client.exceptions import ApiException

        s = self.lab.settings
        request = api.param_serialize("GET", path, path_params=dict(params), query_params=list(query),
                                      header_params={"Accept": "application/json"}, auth_settings=["BearerToken"])
        response = api.call_api(*request, _request_timeout=(s.connect_s, s.read_s))
        if not 200 <= response.status <= 299:
            response.read()
            raise ApiException.from_response(http_resp=response, body=None, data=None)
        return response.response

    def _read(self, what: str, path: str, params: Mapping[str, str] | None = None,
              query: Sequence[tuple[str, Any]] = (), *, max_bytes: int, truncate: bool = False) -> bytes:
        """Make one GET through the client (raw response), read at most ``max_bytes``."""
        api = self.client()
        try:
            response = self._get(api, path, params or {}, query)
            try:
                body = response.read(max_bytes + 1)
            except BaseException:
                response.close()
                raise
            if len(body) > max_bytes:
                response.close()  # unread rest: the connection cannot go back to the pool
                if not truncate:
                    raise ProbeBadResponse(f"{what}: answer larger than {max_bytes} bytes", target=self.target)
                return bytes(body[:max_bytes])
            response.release_conn()
            return bytes(body)
        except ProbeError:
            raise
        except Exception as exc:  # noqa: BLE001 - every client failure becomes a named ProbeError
            raise self._classify(exc, what) from None

    def _json(self, what: str, body: bytes) -> Any:
        try:
            return json.loads(body)
        except ValueError:
            raise ProbeBadResponse(f"{what}: the answer is not JSON", target=self.target) from None

    # ---- the shared lists


    def _key(self, resource: str) -> str:
        return f"kube list {resource}" if resource == "nodes" else f"kube list {resource} -n {self.namespace}"

    def _fetch_list(self, resource: str) -> list[Obj]:
        where = "" if resource == "nodes" else f" in namespace {self.namespace}"
        what = f"list {resource}{where}"
        doc = self._json(what, self._read(what, LIST_PATHS[resource], {"namespace": self.namespace},
                                          max_bytes=LIST_MAX_BYTES))
        items = doc.get("items") if isinstance(doc, dict) else None
        if not isinstance(items, list):
            raise ProbeBadResponse(f"{what}: the answer has no items list", target=self.target)
        return [i for i in items if isinstance(i, dict)]

    def _fact(self, key: str, fn: Callable[[], T], *, budget: float | None = None) -> T:
        """``lab.fact``, re-raising a fresh copy of a cached failure.

        A fact that failed is re-raised to every check that asks; raising the same exception object
        again and again grows its traceback, and each UNKNOWN report then takes longer to format.
        """
        try:
            return self.lab.fact(key, fn, target=self.target, budget=budget)
        except Unknown as exc:
            try:
                fresh = type(exc)(exc.reason, target=exc.target)
            except Exception:  # noqa: BLE001 - an unusual subclass: keep the original
                raise exc.with_traceback(None) from None
            raise fresh from None

    def start(self, lists: Iterable[str] = LISTS, *, secrets: Iterable[str] = ()) -> None:
        """Build the client, then start these shared lists and secret reads, in the background.

        Called at collection end with what the selected checks read; anything else is fetched when asked.
        """
        lists, secrets = [r for r in LISTS if r in set(lists)], list(secrets)
        if not lists and not secrets:
            return
        self.lab.start(f"{CLIENT_FACT} then {', '.join(lists + secrets)}",
                       functools.partial(self._client_then, lists, secrets))

    def _client_then(self, lists: list[str], secrets: list[str]) -> Any:
        from labcheck.lab import origin_of

        api = self.lab.start(CLIENT_FACT, self.client).result()  # the one client build, shared with ready()
        origin = origin_of(self.server)
        for resource in lists:
            self.lab.start(self._key(resource), functools.partial(self._fetch_list, resource), origin=origin)
        for name in secrets:
            self.lab.start(self._secret_key(name), functools.partial(self._fetch_secret_keys, name), origin=origin)
        return api

    def ready(self) -> None:
        """Wait for the client (import and credentials have their own budget; the calls do not pay it)."""
        self._fact(CLIENT_FACT, self.client, budget=max(CLIENT_SETUP_S, self.lab.budget))

    def _list(self, resource: str) -> list[Obj]:
        self.ready()
        return self._fact(self._key(resource), functools.partial(self._fetch_list, resource))

    def pods(self) -> list[Obj]:
        """Every pod in the namespace (one list per run)."""
        return self._list("pods")

    def events(self) -> list[Obj]:
        """Every event in the namespace (one list per run)."""
        return self._list("events")

    def nodes(self) -> list[Obj]:
        """Every node of the cluster (one list per run)."""
        return self._list("nodes")

    def deployments(self) -> list[Obj]:
        return self._list("deployments")

    def replicasets(self) -> list[Obj]:
        return self._list("replicasets")

    # ---- questions the checks ask

    def now(self) -> float:
        return time.time()

    def deployment(self, name: str) -> Obj:
        """One deployment from the shared list; NoData naming what exists when it is absent."""
        items = self.deployments()
        found = next((d for d in items if name_of(d) == name), None)
        if found is None:
            names = ", ".join(sorted(name_of(d) for d in items)) or "none"
            raise NoData(f"deployment {name} not found in namespace {self.namespace} (found: {names})",
                         target=self.target)
        return found

    def deployment_status(self, name: str) -> dict[str, Any]:
        """Replica counts of a deployment: desired, available, ready, updated, and its revision."""
        dep = self.deployment(name)
        spec, status = dep.get("spec") or {}, dep.get("status") or {}
        desired = int(spec["replicas"]) if spec.get("replicas") is not None else 1
        conditions = {str(c.get("type")): {"status": c.get("status"), "reason": c.get("reason"),
                                           "message": c.get("message")} for c in status.get("conditions") or []}
        return {
            "name": name,
            "desired": desired,
            "available": int(status.get("availableReplicas") or 0),
            "ready": int(status.get("readyReplicas") or 0),
            "updated": int(status.get("updatedReplicas") or 0),
            "unavailable": int(status.get("unavailableReplicas") or 0),
            "revision": _revision_of(dep),
            "conditions": conditions,
        }

    def selector_for(self, deployment: str) -> str:
        """The label selector of a deployment's pods: ``label_selector`` for the API, else its own."""
        s = self.lab.settings
        if deployment == s.api_deployment:
            return str(s.label_selector)
        text = selector_text((self.deployment(deployment).get("spec") or {}).get("selector") or {})
        if not text:
            raise NoData(f"deployment {deployment} has an empty selector", target=self.target)
        return text

    def pods_for(self, deployment: str) -> tuple[str, list[Obj]]:
        """(selector, pods) of a deployment, from the shared pod list."""
        selector = self.selector_for(deployment)
        tests = parse_selector(selector)
        return selector, [p for p in self.pods() if all(t(labels_of(p)) for t in tests)]

    def pods_on(self, node: str) -> list[Obj]:
        return [p for p in self.pods() if (p.get("spec") or {}).get("nodeName") == node]

    def pod_events(self, pod: str) -> list[Obj]:
        return events_for(self.events(), "Pod", pod)

    def warning_events(self, since_s: float | None = None) -> list[Obj]:
        """Warning events in the namespace, oldest first (within ``since_s`` when given)."""
        cutoff = self.now() - since_s if since_s is not None else None
        out = []
        for event in self.events():
            if event.get("type") != "Warning":
                continue
            last = event_times(event)[1]
            if cutoff is not None and (last is None or last < cutoff):
                continue
            out.append(event)
        return sorted(out, key=lambda e: event_times(e)[1] or 0.0)

    def rollout_history(self, deployment: str) -> list[Revision]:
        """The deployment's revisions (its replicasets), oldest first."""
        out = []
        for rs in self.replicasets():
            number = _revision_of(rs)
            if number is None or not _owned_by(rs, "Deployment", deployment):
                continue
            meta = rs.get("metadata") or {}
            tmpl = ((rs.get("spec") or {}).get("template") or {}).get("spec") or {}
            out.append(Revision(
                number=number,
                replicaset=name_of(rs),
                images=tuple(str(c.get("image")) for c in tmpl.get("containers") or []),
                created=parse_time(meta.get("creationTimestamp")),
                change_cause=str((meta.get("annotations") or {}).get(CHANGE_CAUSE) or ""),
                replicas=int((rs.get("status") or {}).get("replicas") or 0),
            ))
        return sorted(out, key=lambda r: r.number)

    def latest_rollout(self, deployment: str) -> Rollout:
        """The deployment's current revision and when it rolled out.

        The rollout time is the creation of the revision's replicaset, or later when the
        deployment scaled that replicaset up from zero again (a ``kubectl rollout undo`` reuses an
        old replicaset, so its creation time would hide the rollback).
        """
        dep = self.deployment(deployment)
        history = self.rollout_history(deployment)
        if not history:
            raise NoData(f"no replicasets with a revision belong to deployment {deployment}", target=self.target)
        number = _revision_of(dep) or history[-1].number
        current = next((r for r in history if r.number == number), history[-1])
        started = current.created
        again = re.compile(rf"^Scaled up replica set {re.escape(current.replicaset)} (?:from 0 to \d+|to 1)$")
        for event in events_for(self.events(), "Deployment", deployment):
            first = event_times(event)[0]
            if event.get("reason") == "ScalingReplicaSet" and again.match(str(event.get("message") or "")) \
                    and first is not None and (started is None or first > started + 60):
                started = first
        earlier = [r.number for r in history if r.number < current.number]
        return Rollout(
            deployment=deployment,
            namespace=self.namespace,
            revision=current.number,
            previous_revision=max(earlier) if earlier else None,
            image=", ".join(current.images),
            started=started,
            age_s=None if started is None else max(0.0, self.now() - started),
        )

    # ---- the secret: key names only

    def _fetch_secret_keys(self, name: str) -> dict[str, bool] | None:
        ns = self.namespace
        what = f"get secret {name} in namespace {ns}"
        try:
            raw = self._read(what, "/api/v1/namespaces/{namespace}/secrets/{name}", {"namespace": ns, "name": name},
                             max_bytes=LIST_MAX_BYTES)
        except KubeNotFound:
            return None
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = None  # never quote the body: it holds the values
        del raw
        if not isinstance(doc, dict):
            raise ProbeBadResponse(f"{what}: the answer is not a Secret object", target=self.target)
        data = doc.get("data") or {}
        presence = {str(k): bool(v) for k, v in data.items()}
        doc.clear()  # the values are dropped here; only key names and emptiness are kept
        del data, doc
        return presence

    def secret_keys(self, name: str) -> dict[str, bool] | None:
        """Key names of a secret and whether each value is non-empty; None when it does not exist."""
        self.ready()
        return self._fact(self._secret_key(name), functools.partial(self._fetch_secret_keys, name))

    def _secret_key(self, name: str) -> str:
        return f"kube secret {self.namespace}/{name}"

    def secret_key_presence(self, name: str) -> dict[str, bool]:
        """``{key: value is non-empty}`` for a secret; values are never kept. A missing secret holds no keys."""
        return self.secret_keys(name) or {}

    # ---- logs (evidence)

    def _log_key(self, pod: str, container: str, previous: bool) -> str:
        return f"kube log -n {self.namespace} {pod} -c {container}" + (" --previous" if previous else "")

    def _fetch_log(self, pod: str, container: str, previous: bool) -> str:
        s = self.lab.settings
        limit = int(s.log_limit_bytes)
        query: list[tuple[str, Any]] = [("container", container), ("sinceSeconds", max(1, int(s.log_since_s))),
                                        ("limitBytes", limit), ("previous", "true" if previous else "false")]
        if int(s.log_tail_lines) > 0:
            query.append(("tailLines", int(s.log_tail_lines)))
        what = f"logs of {pod}/{container}" + (" (previous instance)" if previous else "")
        body = self._read(what, "/api/v1/namespaces/{namespace}/pods/{name}/log",
                          {"namespace": self.namespace, "name": pod}, query, max_bytes=limit, truncate=True)
        return body.decode("utf-8", errors="replace")

    def start_log(self, pod: str, container: str, *, previous: bool = False) -> None:
        self.ready()
        self.lab.start(self._log_key(pod, container, previous), lambda: self._fetch_log(pod, container, previous))

    def pod_log(self, pod: str, container: str, *, previous: bool = False) -> str:
        """The last ``log_since_s`` of a container's log, bounded by lines and bytes (once per run)."""
        self.ready()
        return self._fact(self._log_key(pod, container, previous), lambda: self._fetch_log(pod, container, previous))


__all__ = [
    "BAD_WAITING",
    "CRASH_WAITING",
    "NODE_PRESSURE",
    "STARTUP_WAITING",
    "Kube",
    "KubeNotFound",
    "Revision",
    "Rollout",
    "condition",
    "container_spec",
    "container_statuses",
    "describe_container",
    "describe_pod",
    "human_age",
    "last_termination",
    "lifetime_s",
    "memory_and_cpu",
    "node_problems",
    "parse_time",
    "pod_is_ready",
    "pod_is_unhealthy",
    "restarts_within",
    "waiting",
]
