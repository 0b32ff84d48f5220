"""Kubernetes transport: one read-only client per run, each list fetched once, failures as ProbeErrors."""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from labcheck.errors import (
    NotConfigured,
    ProbeAuthError,
    ProbeBadResponse,
    ProbeError,
    ProbeTLSError,
    ProbeUnreachable,
    Unknown,
)

if TYPE_CHECKING:
    from labcheck.lab import Lab
    from labcheck.probes import kube_auth

Obj = dict[str, Any]
T = TypeVar("T")

USER_AGENT = "labcheck (kubernetes-client/python)"
LIST_MAX_BYTES = 64 * 1024 * 1024  # a list bigger than this is refused, not read into memory
CLIENT_FACT = "kube client"
CLIENT_SETUP_S = 30.0  # importing the client and loading credentials (an exec plugin) may take this long
LISTS = ("pods", "events", "nodes", "deployments", "replicasets", "podmetrics")
LIST_PATHS = {
    "pods": "/api/v1/namespaces/{namespace}/pods",
    "events": "/api/v1/namespaces/{namespace}/events",
    "nodes": "/api/v1/nodes",
    "deployments": "/apis/apps/v1/namespaces/{namespace}/deployments",
    "replicasets": "/apis/apps/v1/namespaces/{namespace}/replicasets",
    # What `kubectl top pods` reads: the metrics API (metrics-server); 404 where none is installed.
    "podmetrics": "/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods",
}
LIST_NAMES = {"podmetrics": "pods.metrics.k8s.io"}  # how kubectl names a list in messages


class KubeNotFound(ProbeBadResponse):
    """The object asked for does not exist (HTTP 404)."""


# --- the probe ---------------------------------------------------------------------------------


def _status_message(body: bytes, reason: str) -> str:
    """The ``message`` of the Status object an API error carries, else its reason phrase."""
    try:
        doc = json.loads(body) if body else None
    except (TypeError, ValueError):
        doc = None
    if isinstance(doc, dict) and doc.get("message"):
        return str(doc["message"])[:300]
    return str(reason or "no message")[:300]


@dataclass
class KubeClient:
    """The run's connection to the API server: an httpx client carrying the credentials, and where it goes."""

    http: Any  # httpx.Client
    access: kube_auth.Access

    def url(self, path: str, params: Mapping[str, str]) -> str:
        return self.access.server + path.format(**{k: quote(str(v), safe="") for k, v in params.items()})

    @property
    def extensions(self) -> dict[str, Any]:
        return {"sni_hostname": self.access.sni} if self.access.sni else {}

    def close(self) -> None:
        self.http.close()


class KubeApi:
    """The platform's Kubernetes API: the client built once, each list fetched once per run.

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

    def client(self) -> KubeClient:
        """The run's client, built once."""
        return self.lab.client("kube", self._make_client)

    def _make_client(self) -> KubeClient:
        # Imports ssl: on the first request, never at collection.
        from labcheck.probes import kube_auth

        s = self.lab.settings
        if s.kubeconfig:
            access = kube_auth.from_kubeconfig(str(s.kubeconfig), s.kube_context or None)
        elif self._in_cluster():
            access = kube_auth.in_cluster()
        else:
            # Decided before any import: no Kubernetes target costs no client.
            raise NotConfigured("no kubeconfig configured and not running in a cluster "
                                "(set kubeconfig, or in_cluster inside a pod)", target="Kubernetes API")
        from labcheck.probes import _httpx

        # One attempt per call (the lab's budget bounds the run), no redirects, no pool limit (a run's
        # lists, secrets and logs are in flight at once); proxies as the kubernetes client takes them.
        http = _httpx.api_client(self.lab, verify=access.verify, proxy=access.proxy,
                                 headers={"User-Agent": USER_AGENT, "Accept": "application/json", **access.headers})
        return KubeClient(http, access)

    # ---- one bounded request

    def classify(self, exc: BaseException, what: str) -> ProbeError:
        """A failed exchange as the probe error that names it, on this API server."""
        import ssl

        from labcheck.probes import _httpx

        if isinstance(exc, ProbeError):
            return exc
        if isinstance(exc, _httpx.HTTPError):
            named = _httpx.classify(exc, self.server, self.lab)
            return type(named)(f"{what}: {named.reason}", target=self.target)
        text = str(exc)
        if isinstance(exc, ssl.SSLError):
            return ProbeTLSError(f"{what}: TLS certificate not trusted ({text[:160]})", target=self.target)
        if isinstance(exc, OSError):
            return ProbeUnreachable(f"{what}: {type(exc).__name__}: {text[:160]}", target=self.target)
        return ProbeBadResponse(f"{what}: {type(exc).__name__}: {text[:160]}", target=self.target)

    def status_error(self, what: str, status: int, reason: str, body: bytes) -> ProbeError:
        """An answer other than 2xx, named with the message of the Status object it carries."""
        message = _status_message(body, reason)
        if status in (401, 403):
            return ProbeAuthError(f"{what}: HTTP {status} {reason}: {message}".replace("  ", " "), target=self.target)
        if status == 404:
            return KubeNotFound(f"{what}: HTTP 404: {message}", target=self.target)
        return ProbeBadResponse(f"{what}: HTTP {status}: {message}", target=self.target)

    def _read(self, what: str, path: str, params: Mapping[str, str] | None = None,
              query: Sequence[tuple[str, Any]] = (), *, max_bytes: int, truncate: bool = False,
              method: str = "GET", body: Any = None) -> bytes:
        """Make one request (GET, but for the doctor's access reviews), read at most ``max_bytes``."""
        api = self.client()
        try:
            with api.http.stream(method, api.url(path, params or {}), params=list(query), json=body,
                                 extensions=api.extensions) as response:
                chunks: list[bytes] = []
                size = 0
                for chunk in response.iter_bytes():
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > max_bytes:
                        break  # unread rest: leaving the block closes the connection
                data = b"".join(chunks)
                del chunks
            if not 200 <= response.status_code <= 299:
                raise self.status_error(what, response.status_code, response.reason_phrase, data)
            if len(data) > max_bytes:
                if not truncate:
                    raise ProbeBadResponse(f"{what}: answer larger than {max_bytes} bytes", target=self.target)
                return data[:max_bytes]
            return data
        except ProbeError:
            raise
        except Exception as exc:  # noqa: BLE001 - every client failure becomes a named ProbeError
            raise self.classify(exc, what) from None

    def ask(self, what: str, path: str, body: Obj) -> Obj:
        """POST a question that changes nothing (the doctor's SelfSubjectAccessReview); its answer."""
        doc = self._json(what, self._read(what, path, method="POST", body=body, max_bytes=LIST_MAX_BYTES))
        if not isinstance(doc, dict):
            raise ProbeBadResponse(f"{what}: the answer is not an object", target=self.target)
        return doc

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
        what = f"list {LIST_NAMES.get(resource, resource)}{where}"
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

    def items(self, resource: str) -> list[Obj]:
        """Every object of one of ``LISTS`` in the namespace (nodes: of the cluster), fetched once per run."""
        self.ready()
        return self._fact(self._key(resource), functools.partial(self._fetch_list, resource))

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

    # ---- logs (evidence, and the log-pattern checks): one bounded read per container per run

    def _log_key(self, pod: str, container: str, previous: bool) -> str:
        return f"kube log -n {self.namespace} {pod} -c {container}" + (" --previous" if previous else "")

    def _fetch_log(self, pod: str, container: str, previous: bool) -> PodLog:
        """``kubectl logs --timestamps --since=<log_since_s> --tail=<log_tail_lines> --limit-bytes=<log_limit_bytes>``.

        Read at most ``log_limit_bytes`` (the server cuts there too), decoded with replacement: binary
        bytes never fail the read. The kubelet's timestamps let readers pick their own window in it.
        """
        s = self.lab.settings
        limit = int(s.log_limit_bytes)
        query: list[tuple[str, Any]] = [("container", container), ("sinceSeconds", max(1, int(s.log_since_s))),
                                        ("limitBytes", limit), ("previous", "true" if previous else "false"),
                                        ("timestamps", "true")]
        if int(s.log_tail_lines) > 0:
            query.append(("tailLines", int(s.log_tail_lines)))
        what = f"logs of {pod}/{container}" + (" (previous instance)" if previous else "")
        body = self._read(what, "/api/v1/namespaces/{namespace}/pods/{name}/log",
                          {"namespace": self.namespace, "name": pod}, query, max_bytes=limit, truncate=True)
        return PodLog(pod, container, body.decode("utf-8", errors="replace"), len(body), len(body) >= limit,
                      time.time())

    def start_log(self, pod: str, container: str, *, previous: bool = False) -> None:
        self.ready()
        self.lab.start(self._log_key(pod, container, previous), lambda: self._fetch_log(pod, container, previous))

    def log_read(self, pod: str, container: str, *, previous: bool = False) -> PodLog:
        """The container's log read (once per run): its text, its size, and whether ``log_limit_bytes`` cut it."""
        self.ready()
        return self._fact(self._log_key(pod, container, previous), lambda: self._fetch_log(pod, container, previous))

    def pod_log(self, pod: str, container: str, *, previous: bool = False) -> str:
        """The last ``log_since_s`` of a container's log, bounded by lines and bytes (once per run)."""
        return self.log_read(pod, container, previous=previous).text


@dataclass(frozen=True)
class PodLog:
    """One container's log as read: the text (decoded with replacement), its size, whether the byte cap cut it."""

    pod: str
    container: str
    text: str
    size: int
    truncated: bool
    read_at: float  # when the answer was read: "the last N seconds" of it are counted back from here


__all__ = ["CLIENT_FACT", "LISTS", "KubeApi", "KubeNotFound", "PodLog"]
