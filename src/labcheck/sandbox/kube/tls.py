"""TLS for the stand-in (a self-signed certificate) and the kubeconfig that points at it."""

from __future__ import annotations

import base64
import json
import os
import tempfile
from collections.abc import Iterable

from labcheck.sandbox.kube.model import Obj


def write_kubeconfig(
    path: str | os.PathLike[str],
    *,
    server_url: str,
    token: str,
    namespace: str = "llm-research",
    context: str = "labcheck-sandbox",
    ca_file: str | os.PathLike[str] | None = None,
) -> None:
    """Write a kubeconfig (YAML, mode 0600, atomically) pointing at the stand-in.

    For an https server_url pass ca_file (the stand-in's tls_cert); it is embedded as
    certificate-authority-data so the kubeconfig is self-contained.
    """
    cluster: Obj = {"server": server_url}
    if ca_file is not None:
        with open(ca_file, "rb") as fh:
            cluster["certificate-authority-data"] = base64.b64encode(fh.read()).decode()
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [{"name": context, "cluster": cluster}],
        "users": [{"name": context, "user": {"token": token}}],
        "contexts": [
            {
                "name": context,
                "context": {"cluster": context, "user": context, "namespace": namespace},
            }
        ],
        "current-context": context,
    }
    try:
        import yaml

        text = yaml.safe_dump(doc, sort_keys=False)
    except ImportError:  # JSON is valid YAML; kubectl and the client read it too
        text = json.dumps(doc, indent=2) + "\n"
    target = os.fspath(path)
    fd, tmp = tempfile.mkstemp(prefix=".kubeconfig.", dir=os.path.dirname(os.path.abspath(target)))
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def ensure_tls_files(
    cert_path: str | os.PathLike[str],
    key_path: str | os.PathLike[str],
    hosts: Iterable[str] = ("127.0.0.1", "localhost"),
) -> None:
    """Create a self-signed certificate (its own CA) for the stand-in unless both files exist."""
    cert_file, key_file = os.fspath(cert_path), os.fspath(key_path)
    if os.path.exists(cert_file) and os.path.exists(key_file):
        return
    names = list(dict.fromkeys(hosts))
    try:
        cert_pem, key_pem = _self_signed_cryptography(names)
    except ImportError:
        cert_pem, key_pem = _self_signed_openssl(names)
    _write_private(key_file, key_pem)
    _write_private(cert_file, cert_pem)


def _write_private(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write(data)


def _self_signed_cryptography(hosts: list[str]) -> tuple[bytes, bytes]:
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "labcheck-sandbox-kube")])
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    now = dt.datetime.now(dt.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _self_signed_openssl(hosts: list[str]) -> tuple[bytes, bytes]:
    import ipaddress
    import subprocess

    def san(h: str) -> str:
        try:
            ipaddress.ip_address(h)
            return f"IP:{h}"
        except ValueError:
            return f"DNS:{h}"

    with tempfile.TemporaryDirectory() as d:
        cert, key = os.path.join(d, "c.pem"), os.path.join(d, "k.pem")
        cmd = [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ]
        cmd += ["-nodes", "-keyout", key, "-out", cert, "-days", "365"]
        cmd += ["-subj", "/CN=labcheck-sandbox-kube"]
        cmd += ["-addext", "subjectAltName=" + ",".join(san(h) for h in hosts)]
        subprocess.run(cmd, check=True, capture_output=True, timeout=30)
        with open(cert, "rb") as c, open(key, "rb") as k:
            return c.read(), k.read()
