"""`labcheck doctor`: can labcheck itself use each configured target? One table, exit 0 or 4.

It asks each target about labcheck's own access, never about the platform's health: Prometheus's
query API, the database role (pg_monitor, a read-only session), the Kubernetes verbs the checks use
(SelfSubjectAccessReview), the bucket (HeadBucket, ListObjectsV2) and the test token's expiry.
Every call is the probes' own, with their timeouts; a target that fails is one line, never a traceback.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from labcheck.config import Settings
from labcheck.errors import LabcheckError, NotConfigured, ProbeUnreachable, Unknown
from labcheck.lab import Lab

if TYPE_CHECKING:
    from labcheck.probes.kube import KubeApi

OK, FAIL, SKIP = "OK", "FAIL", "SKIP"
EXIT_OK = 0
EXIT_UNUSABLE = 4

# The Kubernetes access the checks use (deploy/rbac.yaml): (group, resource, verbs, namespaced).
KUBE_ACCESS = (
    ("", "pods", ("get", "list", "watch"), True),
    ("", "events", ("get", "list", "watch"), True),
    ("apps", "deployments", ("get", "list", "watch"), True),
    ("apps", "replicasets", ("get", "list", "watch"), True),
    ("metrics.k8s.io", "pods", ("get", "list"), True),  # PodMetrics: what `kubectl top pods` reads
    ("", "nodes", ("get", "list", "watch"), False),
)
SSAR_PATH = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"


@dataclass(frozen=True)
class Row:
    """One line of the table."""

    target: str
    check: str
    status: str
    reason: str


def _reason(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, Unknown) else f"{type(exc).__name__}: {exc}"  # names the target
    return " ".join(str(text).split())


# --- the targets -------------------------------------------------------------------------------


def prometheus(lab: Lab) -> Iterator[Row]:
    from labcheck.probes import http

    url = str(lab.settings.prometheus_url).rstrip("/") + "/api/v1/query?query=1"
    result = http.request(lab, url)
    doc = result.json() if result.status == 200 else None
    ok = isinstance(doc, dict) and doc.get("status") == "success"
    yield Row("prometheus", "query API", OK if ok else FAIL,
              f"GET {url}: HTTP {result.status}" + ("" if ok else ', not {"status":"success"}'))
    if ok:
        yield signal_map(lab)


def signal_map(lab: Lab) -> Row:
    """Whether the request metrics can be read through the signal map (what ``auto`` detects)."""
    from labcheck.components import _signals

    try:
        m = _signals.resolved(lab)
        _signals.verify(lab, m, "the request counter")
    except Unknown as exc:
        return Row("prometheus", "signal map", FAIL, f"{exc.reason}; set [signals] (see the README)")
    return Row("prometheus", "signal map", OK, m.describe())


_DB_SQL = ("SELECT current_user AS role, pg_has_role(current_user, 'pg_monitor', 'MEMBER') AS monitor, "
           "current_setting('default_transaction_read_only') AS read_only, "
           "current_setting('transaction_read_only') AS tx_read_only")


def database(lab: Lab) -> Iterator[Row]:
    from labcheck.probes import postgres

    session = postgres.Session(lab, str(lab.settings.database_url), role="primary")
    try:
        attempt = session.attempt()
        if attempt.error is not None:
            raise attempt.error
        row = session.run(lambda c: postgres.rows(c, _DB_SQL)[0], "the doctor's question")
    finally:
        session.close()
    yield Row("database", "pg_monitor membership", OK if row["monitor"] else FAIL,
              f"role {row['role']!r} " + ("is a member of pg_monitor" if row["monitor"]
                                          else "is not a member of pg_monitor: GRANT pg_monitor TO it"))
    ro = row["read_only"] == "on" and row["tx_read_only"] == "on"
    yield Row("database", "read-only session", OK if ro else FAIL,
              f"default_transaction_read_only={row['read_only']}, transaction_read_only={row['tx_read_only']}")


def _review(kube: KubeApi, attrs: dict[str, str]) -> bool:
    """POST one SelfSubjectAccessReview (a question to the API server; nothing is changed)."""
    body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attrs}}
    answer = kube.ask("SelfSubjectAccessReview", SSAR_PATH, body)
    return bool((answer.get("status") or {}).get("allowed"))


def kubernetes(lab: Lab) -> Iterator[Row]:
    from labcheck.probes.kube import KubeApi

    kube = KubeApi(lab)
    namespace = kube.namespace
    asks: list[tuple[str, list[dict[str, str]]]] = []
    for group, resource, verbs, namespaced in KUBE_ACCESS:
        where = {"namespace": namespace} if namespaced else {}
        named = f"{resource}.{group}" if group.endswith(".k8s.io") else resource  # pods.metrics.k8s.io
        asks.append((f"{'/'.join(verbs)} {named}",
                     [{"group": group, "resource": resource, "verb": v, **where} for v in verbs]))
    secret = str(lab.settings.secret_name)
    asks.append((f"get secret {secret}",
                 [{"group": "", "resource": "secrets", "verb": "get", "name": secret, "namespace": namespace}]))
    for label, questions in asks:
        denied = [q["verb"] for q in questions if not _review(kube, q)]
        yield Row("kubernetes", label, FAIL if denied else OK,
                  f"denied: {', '.join(denied)}" if denied else f"allowed ({kube.server})")


def storage(lab: Lab) -> Iterator[Row]:
    from labcheck.probes import s3

    bucket = s3.bucket_name(lab)
    failure, elapsed = s3.head(lab, bucket)
    if failure is not None and failure.kind == "network":
        raise ProbeUnreachable(failure.describe(), target=f"S3 {s3.endpoint_name(lab)}")
    yield Row("s3", f"HeadBucket {bucket}", FAIL if failure else OK,
              failure.describe() if failure else f"answered in {elapsed:.3f} s")
    try:
        s3.s3_client(lab).list_objects_v2(Bucket=bucket, MaxKeys=1)
        yield Row("s3", f"ListObjectsV2 {bucket}", OK, "MaxKeys=1 answered")
    except s3.boto_errors() as exc:
        yield Row("s3", f"ListObjectsV2 {bucket}", FAIL, s3.classify(exc).describe())


def token(lab: Lab) -> Iterator[Row]:
    from labcheck.components.auth import token_times, usable_token
    from labcheck.timefmt import iso_z

    value = str(lab.settings.test_token)
    usable_token(value)  # not a JWT, expired, not yet valid: Unknown, named
    exp = token_times(value).exp
    yield Row("test_token", "expiry", OK,
              f"valid until {iso_z(exp)}" if exp is not None else "no exp claim: valid until revoked")


# (name, the key that configures it, what to ask)
TARGETS: tuple[tuple[str, str, Callable[[Lab], Iterator[Row]]], ...] = (
    ("prometheus", "prometheus_url", prometheus),
    ("database", "database_url", database),
    ("kubernetes", "kubeconfig", kubernetes),
    ("s3", "s3_bucket", storage),
    ("test_token", "test_token", token),
)


def diagnose(settings: Settings) -> list[Row]:
    """Every target's rows; a target that cannot be asked is one FAIL row saying why."""
    from concurrent.futures import ThreadPoolExecutor

    from labcheck.evidence import Redactor

    lab = Lab(settings, redactor=Redactor(settings.secrets))

    def rows_of(name: str, key: str, ask: Callable[[Lab], Iterator[Row]]) -> list[Row]:
        if not settings.values.get(key) and not (name == "kubernetes" and settings.values.get("in_cluster")):
            return [Row(name, "configured", SKIP, f"{key} is not configured")]
        try:
            return list(ask(lab))  # all of a target's rows, or the one line saying why not
        except NotConfigured as exc:
            return [Row(name, "access", SKIP, _reason(exc))]
        except Exception as exc:  # noqa: BLE001 - one line per target, never a traceback
            return [Row(name, "access", FAIL, _reason(exc))]

    # The targets are asked at once: a hung target costs the doctor its timeout, not the sum of them.
    try:
        with ThreadPoolExecutor(max_workers=len(TARGETS), thread_name_prefix="labcheck-doctor") as pool:
            found = list(pool.map(lambda target: rows_of(*target), TARGETS))
    finally:
        lab.close()
    return [Row(r.target, r.check, r.status, lab.redact(r.reason)) for rows in found for r in rows]


def render(rows: list[Row], target: str) -> str:
    header = ("target", "check", "status", "reason")
    table = [header, *[(r.target, r.check, r.status, r.reason) for r in rows]]
    widths = [max(len(line[i]) for line in table) for i in range(3)]
    lines = [f"labcheck doctor: {target}"]
    lines += [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:<{widths[2]}}  {d}" for a, b, c, d in table]
    return "\n".join(lines)


# --- the command -------------------------------------------------------------------------------


def add_arguments(subparsers: Any) -> None:
    """`labcheck doctor`: check labcheck's own access to each configured target."""
    p = subparsers.add_parser("doctor", help="check labcheck's own access to each configured target",
                              description=add_arguments.__doc__)
    p.add_argument("--profile", metavar="FILE", help="a TOML profile (as for pytest --profile)")
    p.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                   help="a configuration key (repeatable), e.g. --set database_url=...")
    p.add_argument("--no-sandbox", action="store_true", help="never fall back to the running sandbox")
    p.set_defaults(func=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    from labcheck import config

    started = time.monotonic()
    try:
        settings = config.load(cli=config.parse_assignments(args.assignments, "command line --set"),
                               profile=args.profile, use_sandbox=not args.no_sandbox)
    except LabcheckError as exc:
        print(f"labcheck: error: {exc}")
        return EXIT_UNUSABLE
    rows = diagnose(settings)
    print(render(rows, settings.target))
    bad = sorted({r.target for r in rows if r.status == FAIL})
    usable = [r for r in rows if r.status == OK]
    print(f"\n{'unusable: ' + ', '.join(bad) if bad else 'every configured target is usable'}"
          f" ({len(usable)} OK, {time.monotonic() - started:.1f} s)")
    return EXIT_UNUSABLE if bad or not usable else EXIT_OK

