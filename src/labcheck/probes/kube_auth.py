"""Where the Kubernetes API is and how to authenticate to it: from the kubeconfig or the pod's service account.

Read as kubectl and the kubernetes Python client read them (``kube_config.py``, ``incluster_config.py``),
for the credentials a kubeconfig holds itself: a bearer token (``token``, ``tokenFile``), a client
certificate (``client-certificate[-data]``, ``client-key[-data]``), a user name and password; the
cluster's CA (``certificate-authority[-data]``), ``insecure-skip-tls-verify``, ``tls-server-name`` and
``proxy-url``. Credentials that come from a program (``exec``) or a provider (``auth-provider``) are
loaded by the kubernetes client itself, imported then only: the library and its dependencies (pydantic,
requests, oauthlib) cost a run 16 MiB of peak RSS that a kubeconfig with its own credentials does not
need (issue 16). Requests are then sent with the run's HTTP library, httpx.
"""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from labcheck.errors import NotConfigured, ProbeAuthError

SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
FROM_A_PROGRAM = ("exec", "auth-provider")  # loaded by the kubernetes client


@dataclass
class Access:
    """The API server's URL and what every request to it carries."""

    server: str
    headers: dict[str, str] = field(default_factory=dict)
    verify: ssl.SSLContext | bool = True
    sni: str | None = None  # tls-server-name
    proxy: str | None = None


def _named(doc_entries: list[tuple[dict[str, Any], str]], name: Any) -> tuple[dict[str, Any], str]:
    for entry, base in doc_entries:
        if entry.get("name") == name:
            return entry, base
    return {}, ""


def _load(paths: str) -> tuple[dict[str, Any], dict[str, list[tuple[dict[str, Any], str]]]]:
    """The kubeconfig files merged as kubectl merges a KUBECONFIG list (the first to set a value wins),
    each entry with the folder of the file it came from (relative paths in it are relative to that)."""
    import yaml

    top: dict[str, Any] = {}
    named: dict[str, list[tuple[dict[str, Any], str]]] = {"contexts": [], "clusters": [], "users": []}
    for path in paths.split(os.pathsep):
        with open(path, encoding="utf-8") as fh:
            doc = yaml.safe_load(fh)
        if not isinstance(doc, dict):
            continue
        if not top.get("current-context") and doc.get("current-context"):
            top["current-context"] = doc["current-context"]
        base = os.path.dirname(os.path.abspath(path))
        for key, entries in named.items():
            seen = {e.get("name") for e, _ in entries}
            for entry in doc.get(key) or []:
                if isinstance(entry, dict) and entry.get("name") not in seen:
                    entries.append((entry, base))
    return top, named


def _file_or_data(section: Mapping[str, Any], key: str, base: str, *, b64: bool = True) -> bytes | None:
    """``key-data`` (base64, as kubeconfigs hold it) or the file ``key`` names, relative to ``base``."""
    data = section.get(f"{key}-data")
    if data:
        return base64.standard_b64decode(data) if b64 else str(data).encode()
    path = section.get(key)
    if path:
        with open(os.path.join(base, os.path.expanduser(str(path))), "rb") as fh:
            return fh.read()
    return None


def _tls(ca: bytes | None, cert: bytes | None, key: bytes | None, insecure: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=ca.decode() if ca else None)  # else the system's CAs
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cert and key:
        # The ssl module loads a certificate and key from files only: written for the call and removed.
        with tempfile.TemporaryDirectory(prefix="labcheck-kube-") as tmp:
            cert_path, key_path = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
            for path, data in ((cert_path, cert), (key_path, key)):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
            context.load_cert_chain(cert_path, key_path)
    return context


def from_kubeconfig(paths: str, context_name: str | None) -> Access:
    """The access a kubeconfig gives; ProbeAuthError when it cannot be used."""
    try:
        top, named = _load(paths)
        wanted = context_name or top.get("current-context")
        ctx = (_named(named["contexts"], wanted)[0].get("context") or {}) if wanted else {}
        if not ctx:
            raise ValueError(f"context {wanted!r} not found" if wanted else "no current-context")
        cluster_entry, cluster_base = _named(named["clusters"], ctx.get("cluster"))
        cluster = cluster_entry.get("cluster") or {}
        user_entry, user_base = _named(named["users"], ctx.get("user"))
        user = user_entry.get("user") or {}
        if any(user.get(k) for k in FROM_A_PROGRAM):
            return _from_the_client(paths, context_name)
        server = str(cluster.get("server") or "").rstrip("/")
        if not server:
            raise ValueError(f"cluster {ctx.get('cluster')!r} has no server")
        access = Access(server=server, sni=cluster.get("tls-server-name") or None,
                        proxy=cluster.get("proxy-url") or None)
        token = user.get("token")
        if user.get("tokenFile"):
            with open(os.path.join(user_base, os.path.expanduser(str(user["tokenFile"]))), encoding="utf-8") as fh:
                token = fh.read()
        if token:
            access.headers["Authorization"] = f"Bearer {str(token).strip()}"
        elif "username" in user and "password" in user:
            pair = f"{user['username']}:{user['password']}".encode()
            access.headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        if server.startswith("https"):
            access.verify = _tls(_file_or_data(cluster, "certificate-authority", cluster_base),
                                 _file_or_data(user, "client-certificate", user_base),
                                 _file_or_data(user, "client-key", user_base),
                                 bool(cluster.get("insecure-skip-tls-verify")))
        return access
    except ProbeAuthError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unusable kubeconfig is one named failure
        raise ProbeAuthError(f"cannot load credentials from the kubeconfig: {exc}", target="Kubernetes API") from None


def in_cluster(environ: Mapping[str, str] | None = None, root: str = SERVICE_ACCOUNT) -> Access:
    """The pod's service account, as the kubernetes client's ``load_incluster_config`` reads it."""
    env = os.environ if environ is None else environ
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise NotConfigured("in-cluster service account unusable: Service host/port is not set.",
                            target="Kubernetes API")
    try:
        with open(os.path.join(root, "token"), encoding="utf-8") as fh:
            token = fh.read().strip()
        with open(os.path.join(root, "ca.crt"), "rb") as fh:
            ca = fh.read()
    except OSError as exc:
        raise NotConfigured(f"in-cluster service account unusable: {exc}", target="Kubernetes API") from None
    if not token or not ca:
        raise NotConfigured("in-cluster service account unusable: token or CA file is empty",
                            target="Kubernetes API")
    server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    return Access(server=server, headers={"Authorization": f"Bearer {token}"}, verify=_tls(ca, None, None, False))


def _from_the_client(paths: str, context_name: str | None) -> Access:
    """Credentials from a program or a provider, loaded by the kubernetes client as it loads them."""
    from kubernetes.config.config_exception import ConfigException
    from kubernetes.config.kube_config import new_client_from_config

    from kubernetes import client

    configuration = client.Configuration()
    try:
        new_client_from_config(config_file=paths, context=context_name or None,  # type: ignore[no-untyped-call]
                               persist_config=False, client_configuration=configuration)
    except ConfigException as exc:
        raise ProbeAuthError(f"cannot load credentials from the kubeconfig: {exc}",
                             target="Kubernetes API") from None
    c: Any = configuration
    access = Access(server=str(c.host).rstrip("/"), sni=c.tls_server_name or None, proxy=c.proxy or None)
    token = c.api_key.get("BearerToken") or c.api_key.get("authorization")
    if token:
        access.headers["Authorization"] = str(token)

    def read(path: Any) -> bytes | None:
        if not path:
            return None
        with open(str(path), "rb") as fh:
            return fh.read()

    if access.server.startswith("https"):
        access.verify = _tls(read(c.ssl_ca_cert), read(c.cert_file), read(c.key_file), not c.verify_ssl)
    return access
