"""Credentials for the Kubernetes API, read as the kubernetes client reads them, without importing it."""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from labcheck.errors import NotConfigured, ProbeAuthError
from labcheck.probes import kube_auth


def _kubeconfig(path: Path, user: dict[str, object], cluster: dict[str, object] | None = None) -> str:
    doc = {"apiVersion": "v1", "kind": "Config", "current-context": "a",
           "clusters": [{"name": "c", "cluster": cluster or {"server": "http://127.0.0.1:1/"}}],
           "contexts": [{"name": "a", "context": {"cluster": "c", "user": "u"}}],
           "users": [{"name": "u", "user": user}]}
    path.write_text(json.dumps(doc))  # JSON is YAML
    return str(path)


def test_token_and_token_file_relative_to_the_kubeconfig(tmp_path: Path) -> None:
    access = kube_auth.from_kubeconfig(_kubeconfig(tmp_path / "kc", {"token": "t0k"}), None)
    assert access.server == "http://127.0.0.1:1" and access.headers == {"Authorization": "Bearer t0k"}
    (tmp_path / "tok").write_text("from-file\n")
    access = kube_auth.from_kubeconfig(_kubeconfig(tmp_path / "kc", {"tokenFile": "tok"}), None)
    assert access.headers == {"Authorization": "Bearer from-file"}


def test_user_and_password_are_basic_auth(tmp_path: Path) -> None:
    access = kube_auth.from_kubeconfig(_kubeconfig(tmp_path / "kc", {"username": "me", "password": "pw"}), None)
    assert access.headers == {"Authorization": "Basic " + base64.b64encode(b"me:pw").decode()}


def test_https_cluster_options(tmp_path: Path) -> None:
    cluster = {"server": "https://10.0.0.1:6443", "insecure-skip-tls-verify": True, "tls-server-name": "api.lab",
               "proxy-url": "http://proxy:3128"}
    access = kube_auth.from_kubeconfig(_kubeconfig(tmp_path / "kc", {"token": "x"}, cluster), None)
    assert isinstance(access.verify, ssl.SSLContext) and access.verify.verify_mode == ssl.CERT_NONE
    assert (access.sni, access.proxy) == ("api.lab", "http://proxy:3128")


def test_unusable_kubeconfig_is_an_auth_error_naming_it(tmp_path: Path) -> None:
    cluster = {"server": "https://10.0.0.1:6443", "certificate-authority": "missing-ca.crt"}
    with pytest.raises(ProbeAuthError, match="cannot load credentials from the kubeconfig: .*missing-ca.crt"):
        kube_auth.from_kubeconfig(_kubeconfig(tmp_path / "kc", {"token": "x"}, cluster), None)
    with pytest.raises(ProbeAuthError, match="context 'nope' not found"):
        kube_auth.from_kubeconfig(_kubeconfig(tmp_path / "kc", {"token": "x"}), "nope")


def test_in_cluster_service_account(tmp_path: Path) -> None:
    with pytest.raises(NotConfigured, match="Service host/port is not set"):
        kube_auth.in_cluster({}, str(tmp_path))
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    with pytest.raises(NotConfigured, match="in-cluster service account unusable"):
        kube_auth.in_cluster(env, str(tmp_path))


def test_exec_credentials_come_from_the_kubernetes_client(tmp_path: Path) -> None:
    plugin = tmp_path / "plugin.py"
    plugin.write_text("import json\nprint(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1', "
                      "'kind': 'ExecCredential', 'status': {'token': 'exec-tok'}}))\n")
    user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": sys.executable,
                     "args": [str(plugin)], "interactiveMode": "Never"}}
    access = kube_auth.from_kubeconfig(_kubeconfig(tmp_path / "kc", user), None)
    assert access.headers == {"Authorization": "Bearer exec-tok"} and access.server == "http://127.0.0.1:1"


def test_a_kubeconfig_with_its_own_credentials_does_not_import_the_kubernetes_client(tmp_path: Path) -> None:
    kc = _kubeconfig(tmp_path / "kc", {"token": "x"})
    code = ("import sys; from labcheck.probes import kube_auth; kube_auth.from_kubeconfig(sys.argv[1], None); "
            "print(sorted(m for m in ('kubernetes', 'pydantic', 'requests') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, kc], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
