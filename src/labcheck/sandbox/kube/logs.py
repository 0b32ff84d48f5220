"""Container logs: what each container instance wrote, derived from the clock and the faults."""

from __future__ import annotations

import math
import random

from labcheck.sandbox.kube import apilog
from labcheck.sandbox.kube.model import API, AppSpec, KubeConfig, PodModel, Snapshot, ts_ms

MINUTE = 60.0
LOG_WINDOW = 30 * MINUTE  # the stand-in's logs reach back this far
LOG_STEP = 15.0  # one ordinary log line per container every LOG_STEP seconds
PLANT_PERIOD = 1800.0  # each planted secret line appears once per PLANT_PERIOD
_LEVELS = frozenset({"DEBUG", "INFO", "WARNI", "ERROR", "FATAL"})


def pod_log(
    cfg: KubeConfig, snap: Snapshot, pod: PodModel, *, previous: bool
) -> list[tuple[float, str]]:
    """The lines (time, text) of the current or previous container instance."""
    if previous:
        run = pod.previous
    else:
        run = pod.current or pod.previous  # a waiting container shows its last instance
    assert run is not None
    end = run.finished if run.finished is not None else snap.now
    lo = max(run.started, end - LOG_WINDOW)
    out: list[tuple[float, str]] = []
    is_api = pod.app.name == API
    planted = cfg.planted
    db_pw = planted.get("db_password", "sandbox-db-password")
    bearer = planted.get("bearer", "sandbox-bearer-token")
    if run.started >= lo:
        span = (end - run.started) if run.kind == "crash" else 3.0
        step = min(0.2, span / 12)  # a crash-looping run can be very short
        lines = _startup_lines(pod.app, run.started, cfg.jwt_secret, db_pw, step)
        out.extend(lines)
    first_slot = math.ceil(lo / LOG_STEP)
    last_slot = math.floor(end / LOG_STEP)
    rotated = snap.faults.get("auth-secret-rotated")
    workers_down = snap.faults.get("workers-unavailable")
    for slot in range(first_slot, last_slot + 1):
        t = slot * LOG_STEP
        if t <= run.started + 2:
            continue
        rng = random.Random(f"{pod.name}:{slot}")
        t += rng.random() * 2
        if t > end:
            continue
        out.append((t, _api_line(rng, t) if is_api else _worker_line(rng)))
        if is_api and rotated is not None and t >= rotated.since and not cfg.api_log:
            # Without the API's own log (a stand-in on its own), its refusals are written here.
            client = f"10.244.0.{rng.randint(2, 9)}:{rng.randint(30000, 60000)}"
            out.append(
                (
                    t + 0.1,
                    "WARNING [llm_research.auth] jwt verification failed: Signature verification failed path=/experiments",
                )
            )
            out.append(
                (t + 0.2, f'INFO  [uvicorn.access] {client} - "GET /experiments HTTP/1.1" 401')
            )
        if not is_api and workers_down is not None and t >= workers_down.since:
            out.append(
                (
                    t + 0.3,
                    "ERROR [worker.queue] queue broker unreachable: redis://queue.llm-research.svc:6379 (Connection refused); reporting not ready",
                )
            )
    for offset, text in (
        (137.0, _db_connect_line(db_pw)),
        (
            611.0,
            f"DEBUG [llm_research.registry] outbound request headers: Authorization: Bearer {bearer}",
        ),
        (
            1249.0,
            f"INFO  [llm_research.config] settings reloaded: JWT_SECRET={cfg.jwt_secret} JWT_ALGORITHM=HS256",
        ),
    ):
        t = math.floor((end - offset) / PLANT_PERIOD) * PLANT_PERIOD + offset
        if lo <= t <= end and t > run.started + 2:
            out.append((t, text))
    if run.kind == "crash" and run.finished is not None:
        f = run.finished
        tb = min(0.4, (f - run.started) / 4)
        out.extend(
            [
                (f - tb, "ERROR [uvicorn.error] Traceback (most recent call last):"),
                (f - tb, '  File "/app/llm_research/api/main.py", line 88, in lifespan'),
                (f - tb, "    registry = ModelRegistry.from_env()"),
                (f - tb, '  File "/app/llm_research/registry.py", line 41, in from_env'),
                (f - tb, '    url = os.environ["MODEL_REGISTRY_URL"]'),
                (f - tb, "KeyError: 'MODEL_REGISTRY_URL'"),
                (f - tb / 2, "ERROR [uvicorn.error] Application startup failed. Exiting."),
            ]
        )
    if run.kind == "oom" and run.finished is not None:
        f = run.finished
        limit = pod.app.limits["memory"]
        for before, rss, pct in ((20, "1.87GiB", 93), (6, "1.98GiB", 99)):
            out.append(
                (
                    f - before,
                    f"WARNING [llm_research.memory] rss={rss} limit={limit} ({pct}%) while loading tokenizer cache",
                )
            )
    if is_api and cfg.api_log and not previous and pod.current is not None:
        running = sorted(p.name for p in snap.pods if p.app.name == API and p.current is not None)
        out.extend(apilog.lines_for(cfg.api_log, pod.name, running, lo, end))
    out.sort(key=lambda x: x[0])
    # Application lines carry the app's own timestamp; traceback lines do not.
    return [
        (t, f"{ts_ms(t)} {text}" if text[:5].rstrip() in _LEVELS else text)  # the API's file has its own
        for t, text in out
        if lo <= t <= end + 0.5
    ]


def _db_connect_line(db_pw: str) -> str:
    return f"INFO  [llm_research.db] db connect password={db_pw} host=postgres.llm-research.svc port=5432 dbname=llm_research"


def _startup_lines(
    app: AppSpec, t: float, jwt: str, db_pw: str, step: float = 0.2
) -> list[tuple[float, str]]:
    if app.name == API:
        lines = [
            "INFO  [uvicorn.error] Started server process [1]",
            "INFO  [uvicorn.error] Waiting for application startup.",
            f"INFO  [llm_research.config] settings loaded from environment: JWT_SECRET={jwt} JWT_ALGORITHM=HS256",
            _db_connect_line(db_pw),
            "INFO  [llm_research.storage] s3 bucket llm-research-datasets reachable (region us-east-1)",
            "INFO  [uvicorn.error] Application startup complete.",
            f"INFO  [uvicorn.error] Uvicorn running on http://0.0.0.0:{app.port} (Press CTRL+C to quit)",
        ]
    else:
        lines = [
            "INFO  [worker] experiment-workers starting (concurrency=2, gpu=none)",
            f"INFO  [llm_research.config] settings loaded from environment: JWT_SECRET={jwt}",
            _db_connect_line(db_pw),
            "INFO  [worker.queue] connected to redis://queue.llm-research.svc:6379",
            f"INFO  [worker] health server listening on :{app.port}",
        ]
    return [(t + step * i, line) for i, line in enumerate(lines)]


def _api_line(rng: random.Random, t: float) -> str:
    client = f"10.244.{rng.randint(1, 2)}.{rng.randint(2, 250)}:{rng.randint(30000, 60000)}"
    pick = rng.random()
    if pick < 0.3:
        return f'INFO  [uvicorn.access] 10.244.0.1:{rng.randint(30000, 60000)} - "GET /health/ready HTTP/1.1" 200'
    if pick < 0.5:
        return f'INFO  [uvicorn.access] {client} - "GET /experiments?limit=20 HTTP/1.1" 200'
    if pick < 0.6:
        return f'INFO  [uvicorn.access] {client} - "POST /experiments HTTP/1.1" 201'
    if pick < 0.7:
        return f'INFO  [uvicorn.access] {client} - "GET /datasets HTTP/1.1" 200'
    if pick < 0.8:
        key = f"datasets/ds-{rng.randint(100, 999)}/manifest.json"
        return f"INFO  [llm_research.storage] s3 get_object bucket=llm-research-datasets key={key} status=200 duration_ms={rng.randint(8, 90)}"
    if pick < 0.9:
        return f"INFO  [llm_research.db] pool status size=20 checked_out={rng.randint(1, 6)} overflow=0 waiting=0"
    return f"DEBUG [llm_research.auth] jwt verified sub=user-{rng.randint(1, 60)} exp_in={rng.randint(60, 3600)}s"


def _worker_line(rng: random.Random) -> str:
    exp = f"exp-{rng.randint(1000, 1099)}"
    pick = rng.random()
    if pick < 0.6:
        step = rng.randint(100, 20000)
        return f"INFO  [worker] experiment {exp} step {step}/20000 loss={rng.uniform(0.8, 3.2):.4f} lr=3.0e-04"
    if pick < 0.75:
        return f"INFO  [worker.checkpoint] saved checkpoint s3://llm-research-datasets/checkpoints/{exp}/step-{rng.randint(1, 40) * 500}.pt in {rng.uniform(2, 12):.1f}s"
    if pick < 0.9:
        return f"INFO  [worker.queue] polled queue: {rng.randint(0, 6)} pending, {rng.randint(0, 2)} leased"
    return f"INFO  [llm_research.db] pool status size=5 checked_out={rng.randint(0, 3)} overflow=0 waiting=0"
