"""Start, inspect, fault and stop the local sandbox platform described in README.md.

The pieces live next door: state.py (where the sandbox lives, its state file), processes.py,
postgres.py and services.py. This module keeps every name cli.py, bench/ and the tests use.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from labcheck.evidence import mask_dsn
from labcheck.sandbox import services
from labcheck.sandbox.flavours import (
    DEFAULT_FLAVOR,
    FLAVOR_LIBRARY,
    SHAPE_DEFAULTS,
    check_flavor,
    check_shape,
)
from labcheck.sandbox.postgres import (
    check_traversable,
    pg_bindir,
    pg_ids,
    postmaster_pid,
    start_postgres,
    stop_postgres,
)
from labcheck.sandbox.processes import (
    Starter,
    dir_mode,
    find_binary,
    pid_alive,
    poll,
    port_free,
    port_listening,
    service_ports,
)
from labcheck.sandbox.state import (
    DEFAULT_PORTS,
    HOST,
    SERVICES,
    SandboxError,
    load_state,
    locked,
    new_state,
    one_line,
    ports,
    resolve_dir,
    sandbox_dir,
    state_path,
    write_json,
)

__all__ = [
    "ALL_FAULTS",
    "DEFAULT_PORTS",
    "FAULT_TARGETS",
    "SERVICES",
    "SandboxError",
    "down",
    "fault",
    "heal",
    "load_state",
    "mask_dsn",
    "parse_param_value",
    "pid_alive",
    "poll",
    "port_listening",
    "ports",
    "sandbox_dir",
    "status",
    "up",
]


API_FAULTS = (
    "error-rate",
    "latency",
    "db-pool-leak",
    "long-query",
    "blocking-lock",
    "idle-in-transaction",
    "quota-full",
    "clock-skew",
    "stuck-experiment",
    "docs-down",
    "brute-force",
)
KUBE_FAULTS = (
    "crash-loop",
    "oom-killed",
    "node-not-ready",
    "recent-rollout",
    "workers-unavailable",
    "cpu-saturation",
    "memory-saturation",
    "metrics-server-absent",
    "forbidden",
    "unauthorized",
)
FAULT_TARGETS: dict[str, tuple[str, ...]] = {
    **{name: ("api",) for name in API_FAULTS},
    **{name: ("kube",) for name in KUBE_FAULTS},
    # s3-outage (param mode: 503, 403, 404 or reset) and the gateway's aliases for its modes.
    **{name: ("s3gw",) for name in ("s3-outage", "s3-forbidden", "s3-missing", "s3-reset")},
    "auth-secret-rotated": ("api", "kube"),
}
ALL_FAULTS = tuple(sorted(FAULT_TARGETS))

# quota-full uploads ~1 GiB into moto: about a minute on a busy machine.
_ADMIN_TIMEOUT = httpx.Timeout(120.0, connect=3.0)
_STOP_DEADLINE_S = 10.0


# ---------------------------------------------------------------- up


def up(
    *,
    dir: str | os.PathLike[str] | None = None,
    port_offset: int = 0,
    log_statements: bool = False,
    timeout: float = 90,
    progress: Callable[[str], None] | None = None,
    flavor: str | None = None,
    shape: dict[str, Any] | None = None,
    endpoints: int | None = None,
) -> dict[str, Any]:
    """Bring the whole sandbox up (or find it already up) and return its state.

    `flavor` names the exporter library instrumenting the API and `shape` its bodies' shape
    (sandbox/flavours.py); None: what runs (or ran, for a partial sandbox started again), else
    `playbook` and the playbook's shape. `endpoints` (None: what runs, else 1) is how many endpoint
    sets the API serves (flavours.endpoint_paths), with N times the traffic's routes and the API's pods.
    Idempotent: a sandbox whose recorded processes are all alive and ready is returned as is
    (whatever port_offset says) unless it runs another flavour or shape than asked, which is an
    error; a partial one is torn down first and started clean.
    """
    d = resolve_dir(dir)
    say = progress or (lambda _msg: None)
    if flavor is not None:
        check_flavor(flavor)
    if shape is not None:
        shape = check_shape({**SHAPE_DEFAULTS, **shape})
    with locked(d):
        try:
            existing = load_state(d)
        except SandboxError:  # unreadable: nothing to trust, start clean
            state_path(d).unlink(missing_ok=True)
            existing = None
        if existing is not None:
            if services.healthy(existing):
                _same_platform(d, existing, flavor, shape, endpoints)
                say("sandbox already up")
                return existing
            say("sandbox partially up: stopping the leftovers first")
            _down_unlocked(d, existing)
            # Started again as it was, unless asked otherwise.
            flavor = flavor or existing.get("flavor")
            shape = shape or existing.get("shape")
            endpoints = endpoints or existing.get("endpoints")
        elif pid_alive(postmaster_pid(d / "pgdata"), "postgres"):
            _down_unlocked(d, None)
        return _up_unlocked(d, port_offset, log_statements, timeout, say,
                            check_flavor(flavor or DEFAULT_FLAVOR),
                            check_shape({**SHAPE_DEFAULTS, **(shape or {})}), max(1, endpoints or 1))


def _same_platform(
    d: Path, state: dict[str, Any], flavor: str | None, shape: dict[str, Any] | None,
    endpoints: int | None = None,
) -> None:
    """Refuse to hand back a running sandbox of another flavour or shape than asked."""
    running = state.get("flavor", DEFAULT_FLAVOR)
    if flavor is not None and flavor != running:
        raise SandboxError(
            f"the sandbox in {d} runs flavour {running}, not {flavor}: `labcheck sandbox down` first"
        )
    if endpoints is not None and endpoints != state.get("endpoints", 1):
        raise SandboxError(
            f"the sandbox in {d} serves {state.get('endpoints', 1)} endpoint set(s), not {endpoints}: "
            "`labcheck sandbox down` first"
        )
    if shape is not None and shape != state.get("shape", SHAPE_DEFAULTS):
        raise SandboxError(
            f"the sandbox in {d} runs another shape ({state.get('shape')}): `labcheck sandbox down` first"
        )


def _up_unlocked(
    d: Path,
    port_offset: int,
    log_statements: bool,
    timeout: float,
    say: Callable[[str], None],
    flavor: str,
    shape: dict[str, Any],
    endpoints: int = 1,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    prom_bin = find_binary("/usr/bin/prometheus", "prometheus")
    pushgw_bin = find_binary("/usr/bin/prometheus-pushgateway", "prometheus-pushgateway")
    pg_bindir()
    p = ports(port_offset)
    busy = [f"{name}={port}" for name, port in p.items() if not port_free(port)]
    if busy:
        raise SandboxError(
            f"ports already in use: {', '.join(busy)} (another sandbox? try --port-offset)"
        )

    # 1. directory, secrets, service configs
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, dir_mode())
    (d / "logs").mkdir(exist_ok=True)
    os.chmod(d / "logs", dir_mode())
    ids = pg_ids()
    if ids:
        check_traversable(d, *ids)
    plan = services.Plan.new(d, p, flavor, shape, endpoints)
    services.write_configs(plan)
    state = new_state(d, plan.sec)
    state["flavor"], state["shape"], state["endpoints"] = flavor, shape, plan.endpoints
    st = Starter(d, state, deadline)
    st.save()
    try:
        # 2. PostgreSQL, 3. moto and its seed, 4. s3gw and kube then the API,
        # 5./6. Prometheus and the Pushgateway, 7./8. the suite's settings for this sandbox
        say(f"flavour {flavor}: {FLAVOR_LIBRARY[flavor]}")
        say(f"postgres on {HOST}:{p['postgres']}")
        start_postgres(st, p["postgres"], plan.sec, log_statements)
        services.start_moto(st, plan, say)
        services.start_servers(st, plan, say)
        services.start_prometheus(st, plan, say, prom_bin, pushgw_bin)
        state["settings"] = services.settings(plan)
        st.save()
    except BaseException as exc:
        say("startup failed: stopping what was started")
        with contextlib.suppress(Exception):
            _down_unlocked(d, state)
        if isinstance(exc, SandboxError):
            raise
        if isinstance(exc, Exception):
            raise SandboxError(f"sandbox up failed: {one_line(exc)}") from None
        raise
    return state


# ---------------------------------------------------------------- down


def down(*, dir: str | os.PathLike[str] | None = None) -> None:
    """Stop every recorded process, wait until its ports are closed, remove state.json.

    Idempotent: with nothing running it does nothing. Logs are kept.
    """
    d = resolve_dir(dir)
    if not d.exists():
        return
    with locked(d):
        try:
            state = load_state(d)
        except SandboxError:  # unreadable: stop what pgdata/postmaster.pid still names
            state = None
        _down_unlocked(d, state)


def _down_unlocked(d: Path, state: dict[str, Any] | None) -> None:
    recorded = dict((state or {}).get("services", {}))
    pgdata_pid = postmaster_pid(d / "pgdata")
    if "postgres" not in recorded and pid_alive(pgdata_pid, "postgres"):
        recorded["postgres"] = {"pid": pgdata_pid}
    targets = {
        name: svc["pid"]
        for name, svc in recorded.items()
        if isinstance(svc.get("pid"), int) and pid_alive(svc["pid"], name)
    }
    for name, pid in targets.items():
        if name == "postgres":
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    if "postgres" in targets:
        stop_postgres(d, targets["postgres"])

    def all_gone() -> bool:
        return not any(pid_alive(pid, name) for name, pid in targets.items())

    try:
        poll(all_gone, deadline=time.monotonic() + _STOP_DEADLINE_S, what="processes to exit")
    except SandboxError:
        for name, pid in targets.items():
            if pid_alive(pid, name):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        poll(all_gone, deadline=time.monotonic() + 5.0, what="killed processes to exit")

    sandbox_ports = service_ports(state)
    try:
        poll(
            lambda: not any(port_listening(port) for port in sandbox_ports.values()),
            deadline=time.monotonic() + _STOP_DEADLINE_S,
            what="the sandbox ports to close",
        )
    except SandboxError:
        pass  # reported below, port by port
    finally:
        state_path(d).unlink(missing_ok=True)
    still = [f"{n}={p}" for n, p in sandbox_ports.items() if port_listening(p)]
    if still:
        raise SandboxError(f"processes stopped but ports still listening: {', '.join(still)}")


def status(dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """What runs where, with no secret in it (the DSN's password is masked)."""
    d = resolve_dir(dir)
    state = load_state(d)
    if state is None:
        return {"dir": str(d), "running": False, "complete": False, "services": {}}
    entries = {}
    for name in SERVICES:
        svc = state.get("services", {}).get(name)
        if svc is None:
            continue
        entry = {"pid": svc.get("pid"), "alive": pid_alive(svc.get("pid"), name)}
        for key in ("url", "address", "kubeconfig"):
            if key in svc:
                entry[key] = svc[key]
        entries[name] = entry
    settings = state.get("settings", {})
    complete = set(entries) == set(SERVICES) and bool(settings)
    return {
        "dir": str(d),
        "running": complete and all(s["alive"] for s in entries.values()),
        "complete": complete,
        "services": entries,
        "api_url": settings.get("api_url"),
        "docs_url": settings.get("docs_url"),
        "prometheus_url": settings.get("prometheus_url"),
        "pushgateway_url": settings.get("pushgateway_url"),
        "database_url": mask_dsn(settings.get("database_url", "")) or None,
        "s3_endpoint": settings.get("s3_endpoint"),
        "s3_bucket": settings.get("s3_bucket"),
        "cloudwatch_endpoint": settings.get("cloudwatch_endpoint"),
        "kubeconfig": settings.get("kubeconfig"),
        "namespace": settings.get("namespace"),
        "window": settings.get("window"),
        "flavor": state.get("flavor", DEFAULT_FLAVOR),
        "shape": state.get("shape", SHAPE_DEFAULTS),
    }


def _require_running(d: Path) -> dict[str, Any]:
    state = load_state(d)
    if state is None or not state.get("settings"):
        raise SandboxError(f"no sandbox is up in {d} (run: labcheck sandbox up)")
    return state


def _admin(state: dict[str, Any], service: str, method: str, path: str, body: Any = None) -> Any:
    svc = state.get("services", {}).get(service) or {}
    base = svc.get("url")
    if not base:
        raise SandboxError(f"state.json has no url for {service}")
    url = f"{base}{path}"
    headers = {"X-Admin-Key": state.get("secrets", {}).get("admin_key", "")}
    try:
        verify = services.tls_verify(state, service)
        with httpx.Client(timeout=_ADMIN_TIMEOUT, verify=verify) as client:
            resp = client.request(method, url, json=body, headers=headers)
    except httpx.HTTPError as exc:
        raise SandboxError(
            f"{method} {url} failed: {type(exc).__name__}: {one_line(exc, 160)}"
        ) from None
    if resp.status_code >= 400:
        raise SandboxError(
            f"{method} {url} answered {resp.status_code}: {one_line(resp.text, 200)}"
        )
    if not resp.content:
        return None
    try:
        return resp.json()
    except ValueError:
        return resp.text


def parse_param_value(raw: str) -> Any:
    """A --param value: int, float, true/false, or the string itself."""
    lowered = raw.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def fault(
    name: str, params: dict[str, Any] | None = None, *, dir: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """Inject fault `name` (README's table) with params; returns each service's answer."""
    if name not in FAULT_TARGETS:
        raise ValueError(f"unknown fault {name!r}; valid faults: {', '.join(ALL_FAULTS)}")
    params = dict(params or {})
    d = resolve_dir(dir)
    _require_running(d)
    with locked(d):
        state = _require_running(d)
        answers: dict[str, Any] = {}
        if name == "auth-secret-rotated":
            new_secret = secrets.token_urlsafe(32)
            for service in FAULT_TARGETS[name]:
                answers[service] = _admin(
                    state,
                    service,
                    "POST",
                    f"/admin/faults/{name}",
                    {**params, "new_secret": new_secret},
                )
            state.setdefault("secrets", {})["rotated_jwt_secret"] = new_secret
            write_json(state_path(d), state)
            return answers
        for service in FAULT_TARGETS[name]:
            answers[service] = _admin(state, service, "POST", f"/admin/faults/{name}", params)
        return answers


def heal(*, dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Clear every fault on api, kube and s3gw; returns each service's answer."""
    d = resolve_dir(dir)
    _require_running(d)
    with locked(d):
        state = _require_running(d)
        answers: dict[str, Any] = {}
        errors: list[str] = []
        for service in ("s3gw", "kube", "api"):  # storage first: the API's heal deletes quota filler
            try:
                answers[service] = _admin(state, service, "DELETE", "/admin/faults")
            except SandboxError as exc:
                errors.append(str(exc))
        if state.get("secrets", {}).pop("rotated_jwt_secret", None) is not None:
            write_json(state_path(d), state)
        if errors:
            raise SandboxError("heal incomplete: " + "; ".join(errors))
        return answers
