"""The brute-force fault's sender: bad bearer tokens from a few client addresses, against this API."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets

import httpx

from labcheck.sandbox.api.auth import sign_token
from labcheck.sandbox.api.settings import ApiSettings
from labcheck.sandbox.api.traffic import base_url, ticks


async def brute_force(settings: ApiSettings, *, rps: float, addresses: list[str], subject: str) -> None:
    """GET /experiments with tokens for ``subject`` signed by guessed secrets, at ``rps``, round-robin over
    ``addresses`` (sent as X-Forwarded-For, the proxy header the access log honours), until cancelled."""
    timeout = httpx.Timeout(3.0, connect=1.0)
    inflight: set[asyncio.Task[None]] = set()
    async with httpx.AsyncClient(base_url=base_url(settings), timeout=timeout) as client:

        async def one(address: str) -> None:
            token = sign_token(secrets.token_urlsafe(12), subject=subject, ttl_seconds=300)  # a guessed secret
            with contextlib.suppress(httpx.HTTPError):
                await client.get("/experiments", headers={"Authorization": f"Bearer {token}",
                                                           "X-Forwarded-For": address})

        sources = itertools.cycle(addresses)
        try:
            async for _ in ticks(rps):
                address = next(sources)
                if len(inflight) >= 32:
                    continue
                task = asyncio.create_task(one(address))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
        finally:
            for task in list(inflight):
                task.cancel()
            await asyncio.gather(*inflight, return_exceptions=True)
