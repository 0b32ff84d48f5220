"""Targets and thresholds: defaults < sandbox state < profile file < environment < command line."""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from labcheck import signals
from labcheck.errors import ConfigError
from labcheck.evidence import mask_dsn
from labcheck.timefmt import duration_s, parse_timestamp

Parser = Callable[[Any], Any]


def _text(value: Any) -> str:
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    return str(value).strip()


def _url(value: Any) -> str:
    text = _text(value)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {text!r}")
    try:
        parts.port  # noqa: B018 - validates the port number
    except ValueError as exc:
        raise ValueError(f"bad port in URL {text!r}") from exc
    return text.rstrip("/")


def _dsn(value: Any) -> str:
    text = _text(value)
    parts = urlsplit(text)
    if parts.scheme not in ("postgresql", "postgres"):
        scheme = parts.scheme or "none"
        raise ValueError(f"not a PostgreSQL DSN (scheme {scheme!r}, expected postgresql://)")
    if not parts.hostname:
        raise ValueError("PostgreSQL DSN has no host")
    return text


_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


def _bucket(value: Any) -> str:
    text = _text(value)
    if not text:
        raise ValueError("empty bucket name")
    if not _BUCKET.match(text):
        raise ValueError(f"not a valid S3 bucket name: {text!r}")
    return text


def _nonempty(value: Any) -> str:
    text = _text(value)
    if not text:
        raise ValueError("empty value")
    return text


def _number(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"not a number: {value!r}") from None
    if math.isnan(number) or math.isinf(number):
        raise ValueError(f"not a finite number: {value!r}")
    return number


def _positive(value: Any) -> float:
    number = _number(value)
    if number <= 0:
        raise ValueError(f"must be greater than 0, got {value!r}")
    return number


def _count(value: Any) -> int:
    number = _number(value)
    if number < 0 or number != int(number):
        raise ValueError(f"must be a whole number >= 0, got {value!r}")
    return int(number)


def _ratio(value: Any) -> float:
    number = _number(value)
    if not 0 <= number <= 1:
        raise ValueError(f"must be a ratio between 0 and 1, got {value!r}")
    return number


def _duration(value: Any) -> str:
    text = _text(value)
    try:
        duration_s(text)
    except ValueError:
        raise ValueError(f"not a Prometheus duration such as 5m or 30s: {text!r}") from None
    return text


def _paths(value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, list | tuple) else _text(value).split(",")
    paths = tuple(_text(item) for item in items if _text(item))
    for path in paths:
        if not path.startswith("/"):
            raise ValueError(f"endpoint must start with '/': {path!r}")
    return paths


def _names(value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, list | tuple) else _text(value).split(",")
    return tuple(_text(item) for item in items if _text(item))


def _file(value: Any) -> str:
    text = os.path.expanduser(_text(value))
    if not text:
        raise ValueError("empty path")
    if not os.path.isfile(text):
        raise ValueError(f"file not found: {text}")
    return text


def _kubeconfig(value: Any) -> str:
    """A kubeconfig path, or a list of them separated as in KUBECONFIG; as kubectl does, files that
    do not exist are passed over, but at least one must."""
    text = _text(value)
    parts = [os.path.expanduser(p) for p in text.split(os.pathsep) if p.strip()]
    if not parts:
        raise ValueError("empty path")
    found = [p for p in parts if os.path.isfile(p)]
    if not found:
        raise ValueError(f"file not found: {text}" if len(parts) == 1
                         else f"none of these kubeconfig files exists: {', '.join(parts)}")
    return os.pathsep.join(found)


def read_kubeconfig(paths: str) -> dict[str, Any]:
    """The kubeconfig merged as kubectl merges a KUBECONFIG list: the first file to set a value
    (current-context, a named context, cluster or user) wins. Raises OSError, UnicodeDecodeError or
    yaml.YAMLError with ``filename`` set to the file at fault."""
    import yaml  # kubernetes depends on PyYAML; imported only when a kubeconfig is set

    merged: dict[str, Any] = {"contexts": [], "clusters": [], "users": []}
    seen: dict[str, set[str]] = {key: set() for key in merged}
    for path in paths.split(os.pathsep):
        try:
            with open(path, encoding="utf-8") as fh:
                doc = yaml.safe_load(fh)
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            exc.filename = path  # type: ignore[union-attr]
            raise
        if not isinstance(doc, dict):
            continue
        if doc.get("current-context") and not merged.get("current-context"):
            merged["current-context"] = doc["current-context"]
        for key in ("contexts", "clusters", "users"):
            entries = doc.get(key)
            if not isinstance(entries, list):
                continue
            merged[f"has_{key}"] = True
            for entry in entries:
                name = entry.get("name") if isinstance(entry, dict) else None
                if name is not None and name not in seen[key]:
                    seen[key].add(name)
                    merged[key].append(entry)
    return merged


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = _text(value).lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {value!r}")


@dataclass(frozen=True)
class Key:
    """One configuration key: its parser, default and help text."""

    name: str
    parse: Parser
    default: Any
    help: str
    target: bool = False
    secret: bool = False
    aliases: tuple[str, ...] = ()


KEYS: dict[str, Key] = {
    k.name: k
    for k in [
        # Targets: where the platform is.
        Key("api_url", _url, None, "Platform API base URL", target=True),
        Key("api_endpoints", _paths, ("/experiments", "/datasets"), "API endpoints checked one by one"),
        Key("prometheus_url", _url, None, "Prometheus base URL", target=True),
        Key("pushgateway_url", _url, None, "Pushgateway URL for --push-metrics"),
        Key("database_url", _dsn, None, "PostgreSQL primary DSN", target=True, secret=True, aliases=("DATABASE_URL",)),
        Key("replica_url", _dsn, None, "PostgreSQL replica DSN (replication lag)", target=True, secret=True),
        Key("s3_bucket", _bucket, None, "Dataset bucket", target=True, aliases=("S3_BUCKET",)),
        Key("s3_endpoint", _url, None, "S3 endpoint URL (default: AWS)", target=True),
        Key("cloudwatch_endpoint", _url, None, "CloudWatch endpoint URL (default: AWS)", target=True),
        Key("aws_region", _nonempty, "us-east-1", "AWS region"),
        Key("aws_access_key_id", _nonempty, None, "AWS access key id (default: boto3 chain)", secret=True),
        Key("aws_secret_access_key", _nonempty, None, "AWS secret key (default: boto3 chain)", secret=True),
        Key("kubeconfig", _kubeconfig, None, "kubeconfig file, or a list like KUBECONFIG's (default: in-cluster)", target=True, aliases=("KUBECONFIG",)),
        Key("kube_context", _nonempty, None, "kubeconfig context"),
        Key("namespace", _nonempty, "llm-research", "Kubernetes namespace"),
        Key("label_selector", _nonempty, "app=llm-research-api", "API pods label selector"),
        Key("api_deployment", _nonempty, "llm-research-api", "API deployment name"),
        Key("workers_deployment", _nonempty, "experiment-workers", "Experiment workers deployment"),
        Key("secret_name", _nonempty, "llm-research-secrets", "Kubernetes secret the platform needs"),
        Key("secret_keys", _names, ("JWT_SECRET",), "Keys that secret must hold"),
        Key("test_token", _nonempty, None, "A valid bearer token for protected endpoints", secret=True, aliases=("TEST_TOKEN",)),
        Key("docs_url", _url, None, "Documentation site URL", target=True),
        # Bounds.
        Key("timeout", _positive, 5.0, "Connect and read timeout of every probe, seconds"),
        Key("connect_timeout", _positive, None, "Connect timeout, seconds (default: timeout)"),
        Key("read_timeout", _positive, None, "Read timeout, seconds (default: timeout)"),
        Key("statement_timeout", _positive, 5.0, "PostgreSQL statement_timeout, seconds"),
        Key("max_body_bytes", _positive, 1_048_576, "Largest HTTP body read, bytes"),
        Key("window", _duration, "5m", "PromQL rate window (the playbook's 5m)"),
        # Thresholds: the playbook's values as defaults.
        Key("health_budget_s", _positive, 2.0, "/health response-time budget, seconds"),
        Key("error_ratio_sev1", _ratio, 0.5, "5xx ratio at which the API counts as unavailable"),
        Key("error_ratio_sev2", _ratio, 0.10, "Overall 5xx ratio: >10% is SEV-2"),
        Key("endpoint_error_ratio_sev3", _ratio, 0.05, "5xx ratio on any single endpoint: >5% is SEV-3"),
        Key("history_error_ratio", _ratio, 0.05,
            "5xx ratio no minute of history may exceed after a mitigation: the playbook's high-error-rate "
            "scenario starts above 5%"),
        Key("p95_latency_s", _positive, 2.0, "p95 latency threshold, seconds"),
        Key("db_headroom_sev2", _ratio, 0.80, "Connections in use / available: SEV-2 at this ratio"),
        Key("db_headroom_sev1", _ratio, 0.95, "Connections in use / available: SEV-1 at this ratio"),
        Key("db_idle_max_s", _positive, 600.0, "Idle connections older than this are a leak (10 minutes)"),
        Key("db_idle_max_count", _count, 0, "Idle connections older than db_idle_max_s tolerated"),
        Key("db_idle_in_tx_max_s", _positive, 60.0, "Idle-in-transaction sessions older than this fail"),
        Key("db_long_query_s", _positive, 30.0, "Active queries longer than this fail"),
        Key("db_lock_wait_s", _positive, 10.0, "Sessions blocked longer than this fail"),
        Key("replication_lag_s", _positive, 30.0, "Replica lag threshold, seconds"),
        Key("auth_error_ratio", _ratio, 0.10, "401/403 share of requests that fails the auth check"),
        Key("clock_skew_s", _positive, 30.0, "Clock skew threshold, seconds"),
        Key("s3_quota_bytes", _positive, None, "Dataset bucket quota, bytes"),
        Key("s3_quota_ratio", _ratio, 0.90, "Bucket usage / quota that fails"),
        Key("s3_error_threshold", _count, 0, "S3 4xx/5xx errors in the last hour tolerated"),
        Key("experiment_stuck_s", _positive, 4 * 3600.0, "A running experiment older than this is stuck"),
        Key("restart_window_s", _positive, 3600.0, "Window for container restarts and OOM kills"),
        Key("restart_max", _count, 3, "Restarts within the window tolerated"),
        Key("rollout_window_s", _positive, 1800.0, "A rollout younger than this is recent (30 minutes)"),
        Key("log_since_s", _positive, 1800.0, "Evidence and log patterns: logs from the last N seconds"),
        Key("log_tail_lines", _count, 2000, "Evidence and log patterns: at most this many log lines per container"),
        Key("log_limit_bytes", _positive, 1_048_576,
            "Evidence and log patterns: at most this many bytes of log per container"),
        Key("in_cluster", _bool, False, "Use the in-cluster service account"),
        # Auth, storage, experiments and metrics checks (issue 3).
        Key("auth_baseline_offset", _duration, "1h", "The 401/403 ratio is compared with the same ratio this long ago"),
        Key("s3_error_window", _duration, "1h", "CloudWatch 4xxErrors/5xxErrors look-back (the playbook's last hour)"),
        Key("s3_metrics_filter_id", _nonempty, "EntireBucket", "FilterId of the bucket's S3 request-metrics configuration"),
        Key("s3_list_max_objects", _count, 100_000, "Sum object sizes by listing up to this many objects, else CloudWatch BucketSizeBytes"),
        Key("canary_writes", _bool, False, "Run the opt-in S3 write canary (also enabled by -m writes)"),
        Key("s3_quota_series", _nonempty, "storage_quota_bytes", "Prometheus series with the bucket quota, read when s3_quota_bytes is unset"),
        Key("scrape_stale_factor", _positive, 2.0, "A scrape is stale when its last sample is older than this many scrape intervals"),
        # The signal map (issue 12): which metrics, labels and body fields the checks read.
        *signals.keys(Key),
        # The gate, the canary and pushed metrics (issue 8).
        Key("history_window", _duration, None,
            "History checks: every minute of this look-back must be under the thresholds (set by labcheck gate)"),
        Key("history_since", parse_timestamp, None,
            "History checks start at this time, the mitigation (ISO-8601 or epoch seconds)"),
        Key("metrics_picture", _bool, True, "Draw a failing run's metrics picture (evidence/metrics.png; labcheck[picture])"),
        Key("push_instance", _nonempty, None,
            "Grouping key `instance` of --push-metrics (default: the API URL's host:port)"),
    ]
}

# Parsers a component may use for the keys it declares.
PARSERS: dict[str, Parser] = {
    "text": _nonempty, "url": _url, "dsn": _dsn, "positive": _positive, "count": _count, "ratio": _ratio,
    "bool": _bool, "duration": _duration, "names": _names,
}


def declare(*keys: Key) -> None:
    """Add the configuration keys a component needs (its target, its thresholds with the playbook's
    defaults). They are read like every other key: --set, LABCHECK_<KEY>, the profile. Declaring a
    name twice is allowed only with the same definition."""
    for key in keys:
        known = KEYS.get(key.name)
        if known is not None and known != key:
            raise ValueError(f"configuration key {key.name!r} is already declared differently")
        KEYS[key.name] = key


SOURCE_DEFAULT = "default"
SOURCE_SANDBOX = "sandbox state"


@dataclass(frozen=True)
class Settings:
    """The effective configuration, with where each value came from."""

    values: Mapping[str, Any]
    sources: Mapping[str, str]
    target: str = "unconfigured"
    secrets: tuple[str, ...] = field(default=(), repr=False)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def connect_s(self) -> float:
        return float(self.values["connect_timeout"] or self.values["timeout"])

    @property
    def read_s(self) -> float:
        return float(self.values["read_timeout"] or self.values["timeout"])

    @property
    def window_s(self) -> float:
        return duration_s(self.values["window"])

    def describe(self) -> str:
        """One line naming what is being checked, for the report header."""
        shown = []
        for name in ("api_url", "prometheus_url", "database_url", "s3_bucket", "kubeconfig"):
            value = self.values.get(name)
            if value:
                shown.append(f"{name}={mask_dsn(str(value))}")
        ctx = self.values.get("kube_context")
        ns = self.values.get("namespace")
        shown.append(f"namespace={ns}" + (f" context={ctx}" if ctx else ""))
        return f"{self.target}: " + " ".join(shown)


def _sandbox_settings() -> tuple[Path, dict[str, Any]] | None:
    """The running sandbox's state file and settings, or None when there is none to read."""
    # Imported here: loading the configuration must not import the sandbox package.
    from labcheck.sandbox import state

    try:
        data = state.load_state()
    except state.SandboxError:
        return None
    settings = data.get("settings") if data is not None else None
    if not isinstance(settings, dict):
        return None
    return state.state_path(state.sandbox_dir()), settings


def _flatten(table: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, str, Any]]:
    transparent = {"target", "targets", "thresholds", "labcheck", "timeouts"}
    for key, value in table.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            inner = "" if key in transparent and not prefix else dotted
            for name, sub_dotted, sub_value in _flatten(value, inner):
                yield name, sub_dotted if inner else f"{key}.{sub_dotted}", sub_value
        else:
            yield dotted.replace(".", "_"), dotted, value


def read_profile(path: str) -> dict[str, tuple[Any, str]]:
    """Read a TOML profile file into {key: (value, source)}."""
    name = os.path.basename(path)
    try:
        with open(os.path.expanduser(path), "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"profile {path}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"profile {path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"profile {name}: not valid TOML: {exc}") from None
    out: dict[str, tuple[Any, str]] = {}
    for key, dotted, value in _flatten(data):
        key = signals.RENAMED.get(key, key)
        if key not in KEYS:
            raise ConfigError(f"profile {name}, key {dotted}: unknown key (known: see `labcheck keys`)")
        out[key] = (value, f"profile {name}, key {dotted}")
    return out


def read_environment(environ: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    """LABCHECK_<KEY> variables, and the playbook's own names as aliases."""
    out: dict[str, tuple[Any, str]] = {}
    for key in KEYS.values():
        for alias in key.aliases:
            if environ.get(alias):
                out[key.name] = (environ[alias], f"environment variable {alias}")
        var = f"LABCHECK_{key.name.upper()}"
        if var in environ:
            out[key.name] = (environ[var], f"environment variable {var}")
    return out


def parse_assignments(items: Iterable[str], source: str) -> dict[str, tuple[Any, str]]:
    """Parse KEY=VALUE pairs from the command line."""
    out: dict[str, tuple[Any, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_").replace(".", "_").lower()
        key = signals.RENAMED.get(key, key)
        if not sep:
            raise ConfigError(f"{source} {item!r}: expected KEY=VALUE")
        if key not in KEYS:
            raise ConfigError(f"{source} {key}: unknown key")
        out[key] = (value, f"{source} {key}")
    return out


def load(
    *,
    cli: Mapping[str, tuple[Any, str]] | None = None,
    profile: str | None = None,
    environ: Mapping[str, str] | None = None,
    use_sandbox: bool = True, read_files: bool = True,
) -> Settings:
    """Merge every source, validate every value, name the target; read the kubeconfig only with ``read_files``."""
    environ = os.environ if environ is None else environ
    layers: list[dict[str, tuple[Any, str]]] = []
    profile = profile or environ.get("LABCHECK_PROFILE") or None
    if profile:
        layers.append(read_profile(profile))
    layers.append(read_environment(environ))
    layers.append(dict(cli or {}))

    explicit = {k for layer in layers for k in layer if KEYS[k].target}
    raw: dict[str, tuple[Any, str]] = {k.name: (k.default, SOURCE_DEFAULT) for k in KEYS.values()}
    target = "configured target"
    if not explicit and use_sandbox:
        sandbox = _sandbox_settings()
        if sandbox is not None:
            path, settings = sandbox
            target = f"sandbox ({path})"
            for key, value in settings.items():
                if key in KEYS and value is not None:
                    raw[key] = (value, SOURCE_SANDBOX)
        else:
            target = "nothing configured (no sandbox running)"
    for layer in layers:
        raw.update(layer)

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, (value, source) in raw.items():
        sources[name] = source
        if value is None or (source == SOURCE_DEFAULT and value == KEYS[name].default):
            values[name] = value
            continue
        try:
            values[name] = KEYS[name].parse(value)
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    if values["kubeconfig"] and read_files:
        _check_kubeconfig(values["kubeconfig"], values["kube_context"], sources)
    secrets = tuple(
        str(values[k.name]) for k in KEYS.values() if k.secret and values.get(k.name)
    )
    return Settings(values=values, sources=sources, target=target, secrets=secrets)


def _check_kubeconfig(path: str, context: str | None, sources: Mapping[str, str]) -> None:
    import yaml

    where = sources["kubeconfig"]
    try:
        doc = read_kubeconfig(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read kubeconfig {getattr(exc, 'filename', path)}: {exc}") from None
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        at = f" at line {line + 1}" if line is not None else ""
        raise ConfigError(f"{where}: kubeconfig {getattr(exc, 'filename', path)} is not valid YAML{at}") from None
    if not doc.get("has_contexts"):
        raise ConfigError(f"{where}: kubeconfig {path} has no contexts list")
    names = [c.get("name") for c in doc["contexts"]]
    wanted = context or doc.get("current-context")
    if not wanted:
        raise ConfigError(f"{where}: kubeconfig {path} has no current-context and none is set")
    if wanted not in names:
        src = sources["kube_context"] if context else f"{where}, current-context"
        raise ConfigError(f"{src}: context {wanted!r} not in kubeconfig {path} (has: {', '.join(map(str, names))})")
