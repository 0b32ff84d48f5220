"""Background traffic: the platform's own clients calling the API over loopback, so it has rates to show."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import random
from collections.abc import AsyncIterator, Callable, Iterator, Mapping

import httpx

from labcheck.sandbox.api.settings import ApiSettings
from labcheck.sandbox.flavours import DATA_ROUTES, endpoint_paths

# The platform's clients reach the API through the ingress, which names them in X-Forwarded-For: a
# few dozen addresses of the pod network, each signed in as one of a few dozen users.
CLIENTS = tuple(f"10.244.{1 + i % 2}.{11 + 7 * i}" for i in range(32))
SUBJECTS = tuple(f"user-{n}" for n in range(1, 25))


def base_url(settings: ApiSettings) -> str:
    """This API over loopback."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "", "::") else settings.host
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


async def ticks(rps: float) -> AsyncIterator[None]:
    """Yield about ``rps`` times a second, forever (a late tick is not made up for more than a second)."""
    loop = asyncio.get_running_loop()
    interval = 1.0 / rps
    next_at = loop.time()
    while True:
        next_at += interval
        delay = next_at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -1.0:
            next_at = loop.time()
        yield


async def traffic(settings: ApiSettings, client_token: Callable[[str], str]) -> None:
    """Real HTTP requests to this API over loopback, at about traffic_rps.

    `client_token` gives the bearer token one client sends (Auth.client_token: the real clock,
    and after a rotation mostly the old secret).
    """
    s = settings
    if s.traffic_rps <= 0:
        return
    concurrency = s.traffic_concurrency or max(8, math.ceil(s.traffic_rps * 3))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(6.0, connect=1.0)
    sem = asyncio.Semaphore(concurrency)
    inflight: set[asyncio.Task[None]] = set()
    async with httpx.AsyncClient(base_url=base_url(s), timeout=timeout, limits=limits) as client:
        while True:  # wait for the server to listen
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get("/health")).status_code == 200:
                    break
            await asyncio.sleep(0.2)
        # Every endpoint set gets its share: the data routes under each prefix ("" for the first), in turn.
        prefixes = [p.removesuffix(DATA_ROUTES[0]) for p in endpoint_paths(s.endpoints) if p.endswith(DATA_ROUTES[0])]
        turns = {route: itertools.cycle(prefixes) for route in DATA_ROUTES}
        async for _ in ticks(s.traffic_rps):
            if sem.locked():
                continue
            await sem.acquire()
            task = asyncio.create_task(_one_request(client, sem, client_token, turns))
            inflight.add(task)
            task.add_done_callback(inflight.discard)


async def _one_request(
    client: httpx.AsyncClient, sem: asyncio.Semaphore, client_token: Callable[[str], str],
    turns: Mapping[str, Iterator[str]],
) -> None:
    try:
        roll = random.random()
        forwarded = {"X-Forwarded-For": random.choice(CLIENTS)}
        if roll < 0.6:
            headers = {"Authorization": f"Bearer {client_token(random.choice(SUBJECTS))}", **forwarded}
            await client.get(next(turns["/experiments"]) + "/experiments", headers=headers)
        elif roll < 0.8:
            await client.get(next(turns["/datasets"]) + "/datasets", headers=forwarded)
        elif roll < 0.9:
            await client.get("/health")
        else:
            await client.get("/health/ready")
    except Exception:  # noqa: BLE001 - traffic never crashes
        pass
    finally:
        sem.release()
