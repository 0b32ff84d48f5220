"""Log patterns: the API pods' logs, read once per run, counted per pattern and pod as the playbook greps them.

One bounded read per API container (``kubectl logs --timestamps --since=<log_since_s>
--tail=<log_tail_lines> --limit-bytes=<log_limit_bytes>``), shared with the Kubernetes evidence of a
failing check (the same lab fact). Each scenario's window is picked out of that read by the
kubelet's timestamps: Scenario 1's ``--since=10m`` (``log_error_window_s``), Scenarios 5 and 6's
``--since=30m`` (``log_storage_window_s``, ``log_auth_window_s``), each at most the read's reach and
counted back from when the read was made (a check that runs late in a slow run judges the same lines).
A read cut by ``log_tail_lines`` covers less than the window: rates are taken over what it covers.
A read cut by ``log_limit_bytes`` does not reach the present: what it misses cannot pass.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import pytest

from labcheck import config
from labcheck.components import refers_to
from labcheck.components.kubernetes import Kube
from labcheck.errors import NoData, Unknown
from labcheck.lab import Lab
from labcheck.prefetch import Use, component, fact
from labcheck.timefmt import parse_time

refers_to("the API pods' log patterns", "api_gateway", "storage", "auth")

config.declare(
    config.Key("log_error_window_s", config.PARSERS["positive"], 600.0,
               "Error-line surge: error/panic/fatal lines are counted over the last N seconds of the API pods' "
               "logs (Scenario 1's --since=10m; at most log_since_s)"),
    config.Key("log_error_lines_per_min", config.PARSERS["positive"], 10.0,
               "Error-line surge: more error/panic/fatal lines per minute than this, summed over the API pods, fails"),
    config.Key("log_lines_min", config.PARSERS["count"], 5,
               "Error-line surge and S3 errors: fewer matching lines than this in the window is a blip, not a "
               "surge (one failed call in a short window is a high rate of nothing)"),
    config.Key("log_storage_window_s", config.PARSERS["positive"], 1800.0,
               "S3 errors in the logs: counted over the last N seconds (Scenario 5's --since=30m; at most log_since_s)"),
    config.Key("log_s3_errors_per_min", config.PARSERS["positive"], 1.0,
               "S3 errors in the logs: more s3/aws lines that also read as errors per minute than this fails"),
    config.Key("log_auth_window_s", config.PARSERS["positive"], 1800.0,
               "Brute force: 401s counted over the last N seconds (Scenario 6's --since=30m; at most log_since_s)"),
    config.Key("brute_force_min_401", config.PARSERS["count"], 50,
               "Brute force: fewer 401s than this in log_auth_window_s is never brute force"),
    config.Key("brute_force_sources", config.PARSERS["count"], 3,
               "Brute force: 'few' client addresses or subjects: at most this many"),
    config.Key("brute_force_share", config.PARSERS["ratio"], 0.8,
               "Brute force: the few addresses (or subjects) send at least this share of the 401s"),
)

# The playbook's greps, case-insensitive: Scenario 1, Scenario 5, Scenario 6.
PATTERNS = {
    "error/panic/fatal": re.compile(r"error|panic|fatal", re.IGNORECASE),
    "s3/aws": re.compile(r"s3|aws", re.IGNORECASE),
    "401/403/auth/jwt": re.compile(r"401|403|auth|jwt", re.IGNORECASE),
}
# An s3/aws line that reports a failure (the grep alone also finds every successful S3 call).
FAILURE = re.compile(r"error|fail|exception|timed? ?out|denied|refused|unavailable|throttl", re.IGNORECASE)
MAX_LINE = 2000  # characters of one line kept for matching and evidence (a megabyte line is cut)
MAX_SHOWN = 200  # matching lines per attachment
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
# Access lines: uvicorn's `ADDR[:PORT] - "GET /path HTTP/1.1" 401`, and the common/combined log
# format of nginx and Apache, `ADDR - user [time] "GET /path HTTP/1.1" 401 ...`.
ACCESS = re.compile(r"(?P<addr>[0-9A-Fa-f.:\[\]]+?)(?::\d{1,5})? - (?:\S+ \[[^\]]*\] )?\"(?P<method>[A-Z]+) (?P<path>\S+)"
                    r"[^\"]*\" (?P<status>\d{3})\b")
# The subject of an authentication failure, when the API names it.
SUBJECT = re.compile(r"\b(?:sub|subject|user(?:name)?)=(?P<subject>[^\s,;\"']+)")
AUTH_FAILURE = re.compile(r"auth\w* fail|unauthori[sz]ed|invalid (?:token|credentials)|jwt", re.IGNORECASE)


@dataclass(frozen=True)
class Line:
    """One log line of one pod: the kubelet's timestamp (None when the server sent none) and the text."""

    pod: str
    t: float | None
    text: str


@dataclass(frozen=True)
class Read:
    """One API container's log as read: its lines, and how far the read reaches back and forward."""

    pod: str
    container: str
    lines: tuple[Line, ...]
    cut_by_tail: bool  # log_tail_lines lines came back: the read starts after the window's start
    cut_by_bytes: bool  # log_limit_bytes cut the answer: it stops before the present
    at: float  # when it was read: its windows end here, however late a check looks at it

    @property
    def first(self) -> float | None:
        return next((ln.t for ln in self.lines if ln.t is not None), None)

    @property
    def last(self) -> float | None:
        return next((ln.t for ln in reversed(self.lines) if ln.t is not None), None)

    def span(self, window_s: float) -> tuple[float, float]:
        """The part of the window (the last ``window_s`` before the read) this read covers."""
        start = self.at - window_s
        lo = max(start, self.first or start) if self.cut_by_tail else start
        hi = (self.last or lo) if self.cut_by_bytes else self.at
        return lo, hi

    def within(self, window_s: float) -> list[Line]:
        start = self.at - window_s
        return [ln for ln in self.lines if ln.t is None or ln.t >= start]


@dataclass(frozen=True)
class Rate:
    """Lines matching a pattern per minute in a window, summed over the pods, and what the reads missed."""

    pattern: str
    window_s: float
    count: int
    per_min: float
    by_pod: dict[str, int]
    short: list[str]  # how a read falls short of the window

    def text(self) -> str:
        pods = ", ".join(f"{pod} {n}" for pod, n in sorted(self.by_pod.items()))
        return f"{self.per_min:.1f} lines/min ({self.count} in the last {self.window_s:g} s: {pods or 'no pod'})"


@dataclass(frozen=True)
class Sources:
    """Who the 401s in a window came from: client addresses (access lines) and subjects (auth failures)."""

    window_s: float
    refused: int  # 401 access lines
    access_lines: int  # access lines of any status
    addresses: Counter[str]
    subjects: Counter[str]
    failures_without_subject: int


@dataclass(frozen=True)
class ApiLogs:
    """The API pods' logs, read once per run."""

    deployment: str
    target: str
    since_s: float
    reads: tuple[Read, ...]
    _counts: dict[str, dict[str, int]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def window(self, seconds: float) -> float:
        """A scenario's window, at most the read's reach."""
        return min(float(seconds), self.since_s)

    def lines(self, window_s: float) -> list[Line]:
        window = self.window(window_s)
        return [ln for r in self.reads for ln in r.within(window)]

    def matching(self, pattern: str, window_s: float, *, also: re.Pattern[str] | None = None) -> list[Line]:
        rx = PATTERNS[pattern]
        return [ln for ln in self.lines(window_s) if rx.search(ln.text) and (also is None or also.search(ln.text))]

    def rate(self, pattern: str, window_s: float, *, also: re.Pattern[str] | None = None) -> Rate:
        """Matching lines per minute: each pod's count over the part of the window its read covers, summed."""
        window = self.window(window_s)
        found = Counter(ln.pod for ln in self.matching(pattern, window, also=also))
        per_min, short = 0.0, []
        for r in self.reads:
            lo, hi = r.span(window)
            if r.cut_by_bytes:
                short.append(f"{r.pod}: log_limit_bytes cut the read "
                             f"{'at an unknown time' if r.last is None else f'{r.at - r.last:.0f} s before its end'}")
            if hi <= lo:
                continue
            per_min += found.get(r.pod, 0) * 60.0 / max(hi - lo, 1.0)
        return Rate(pattern, window, sum(found.values()), per_min, {r.pod: found.get(r.pod, 0) for r in self.reads},
                    short)

    def counts(self) -> dict[str, dict[str, int]]:
        """Lines per pattern and pod in each pattern's whole read (what the playbook's greps would show);
        counted once per read, however many failing checks show the table."""
        if not self._counts:
            self._counts.update({name: {r.pod: sum(1 for ln in r.lines if rx.search(ln.text)) for r in self.reads}
                                 for name, rx in PATTERNS.items()})
        return {name: dict(per_pod) for name, per_pod in self._counts.items()}

    def sources(self, window_s: float) -> Sources:
        """The 401s of the window by client address, and the authentication failures by subject."""
        addresses: Counter[str] = Counter()
        subjects: Counter[str] = Counter()
        access = bare = 0
        for ln in self.lines(window_s):
            m = ACCESS.search(ln.text)
            if m is not None:
                access += 1
                if m["status"] == "401":
                    addresses[m["addr"].strip("[]")] += 1
                continue
            if AUTH_FAILURE.search(ln.text) and re.search(r"fail|invalid|denied|refused|expired", ln.text, re.I):
                s = SUBJECT.search(ln.text)
                if s is not None and s["subject"] not in ("-", ""):
                    subjects[s["subject"]] += 1
                else:
                    bare += 1
        return Sources(self.window(window_s), sum(addresses.values()), access, addresses, subjects, bare)

    def table(self) -> str:
        """The counts per pattern and pod, as one table."""
        pods = [r.pod for r in self.reads]
        counts = self.counts()
        width = max([len(p) for p in pods] + [24])
        lines = [f"# lines matching each playbook grep in the API pods' logs (last {self.since_s:g} s, one read per pod)",
                 f"{'POD':<{width}} {'LINES':>7} " + " ".join(f"{name:>18}" for name in PATTERNS)
                 + "  READ"]
        for r in self.reads:
            how = ", ".join(filter(None, ["cut by log_tail_lines" if r.cut_by_tail else "",
                                          "cut by log_limit_bytes" if r.cut_by_bytes else ""])) or "complete"
            lines.append(f"{r.pod:<{width}} {len(r.lines):>7} "
                         + " ".join(f"{counts[name][r.pod]:>18}" for name in PATTERNS) + f"  {how}")
        return "\n".join(lines) + "\n"

    def evidence(self, pattern: str, window_s: float, *, also: re.Pattern[str] | None = None) -> str:
        """The counts table, then the matching lines of the window (the newest ``MAX_SHOWN``)."""
        found = self.matching(pattern, window_s, also=also)
        shown = found[-MAX_SHOWN:]
        head = (f"\n# {len(found)} line(s) matching {pattern} in the last {self.window(window_s):g} s"
                + (f", the newest {len(shown)} shown" if len(found) > len(shown) else "") + "\n")
        return self.table() + head + "".join(f"{ln.pod}: {ln.text}\n" for ln in shown)


def parse(pod: str, container: str, text: str, *, tail_lines: int, cut_by_bytes: bool, at: float) -> Read:
    """A container's log text as lines with the kubelet's timestamps; long lines cut, control bytes replaced."""
    raw = text.splitlines()
    if cut_by_bytes and raw and not text.endswith("\n"):
        raw = raw[:-1]  # the last line was cut mid-way by the byte cap
    lines = []
    for row in raw:
        head, _, rest = row.partition(" ")
        t = parse_time(head) if head[:4].isdigit() else None
        body = rest if t is not None else row
        if len(body) > MAX_LINE:
            body = body[:MAX_LINE] + f" ... [{len(body) - MAX_LINE} more characters]"
        lines.append(Line(pod, t, _CONTROL.sub("\ufffd", body)))
    return Read(pod, container, tuple(lines), cut_by_tail=tail_lines > 0 and len(raw) >= tail_lines,
                cut_by_bytes=cut_by_bytes, at=at)


def _start(logs: Logs, uses: Sequence[Use]) -> None:
    """The pod list, then each API container's log read, in the background."""
    logs.kube.api.start(["pods"])
    logs.lab.start("api pod logs started", logs.start_reads)


@component("api_logs")
class Logs:
    """The API pods' logs: counts per playbook pattern and pod, rates in a window, who the 401s came from."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.kube = Kube(lab)
        self._lock = threading.Lock()
        self._read: ApiLogs | None = None

    def _containers(self) -> list[tuple[str, str]]:
        pods = self.kube.pods_for(str(self.lab.settings.api_deployment), required=True)
        return [(p.name, str(c.name)) for p in pods for c in p.containers if not c.init and c.name]

    @fact(None)  # started by _start (the prefetch) or by read()
    def start_reads(self) -> int:
        """Start every API container's log read; the number started."""
        found = self._containers()
        for pod, container in found:
            self.kube.start_log(pod, container)
        return len(found)

    @fact(_start)
    def read(self) -> ApiLogs:
        """The API pods' logs (once per run): NoData when there are none at all."""
        with self._lock:
            if self._read is None:
                self._read = self._assemble()
            return self._read

    def _assemble(self) -> ApiLogs:
        s = self.lab.settings
        deployment = str(s.api_deployment)
        containers = self._containers()
        for pod, container in containers:
            self.kube.start_log(pod, container)
        reads, failed = [], []
        for pod, container in containers:
            try:
                got = self.kube.log_read(pod, container)
            except Unknown as exc:
                failed.append(f"{pod}/{container}: {exc.reason}")
                continue
            reads.append(parse(pod, container, got.text, tail_lines=int(s.log_tail_lines), cut_by_bytes=got.truncated,
                               at=got.read_at))
        target = f"logs of deployment/{deployment} in namespace {self.kube.namespace} ({self.kube.target})"
        if failed and not reads:
            raise NoData("no API pod's log could be read: " + "; ".join(failed), target=target)
        if failed:  # a pod not read could hold what the others do not: no pass on a part
            raise NoData(f"{len(failed)} of {len(containers)} API container logs could not be read: "
                         + "; ".join(failed), target=target)
        if not any(r.lines for r in reads):
            raise NoData(f"the {len(reads)} API container(s) wrote no log line in the last {s.log_since_s:g} s "
                         "(log_since_s): nothing to count", target=target)
        return ApiLogs(deployment, target, float(s.log_since_s), tuple(reads))


def top_share(counter: Counter[str], few: int) -> tuple[list[tuple[str, int]], float]:
    """The ``few`` most frequent keys and the share of the total they hold."""
    total = sum(counter.values())
    top = counter.most_common(few)
    return top, (sum(n for _, n in top) / total if total else 0.0)


def shown(items: Iterable[tuple[str, int]]) -> str:
    return ", ".join(f"{k} ({n})" for k, n in items) or "none"


@pytest.fixture(scope="session")
def api_logs(lab: Lab) -> Logs:
    """The API pods' logs, read once per run, counted per playbook pattern."""
    return Logs(lab)
