"""Bearer tokens of the sandbox API: HS256 JWTs signed with a secret that a fault can rotate."""

from __future__ import annotations

import time
from typing import Any

import jwt

from labcheck.sandbox.api.settings import APP_NAME

JWT_ALGORITHM = "HS256"


def sign_token(secret: str, subject: str = "labcheck", ttl_seconds: int = 3600) -> str:
    """An HS256 bearer token the API accepts while `secret` is its signing secret."""
    now = int(time.time())
    claims = {"sub": subject, "iat": now, "exp": now + ttl_seconds, "iss": APP_NAME}
    return jwt.encode(claims, secret, algorithm=JWT_ALGORITHM)


class Auth:
    """The signing secret in use (the configured one unless rotated) and the checks made with it."""

    def __init__(self, configured_secret: str) -> None:
        self.configured_secret = configured_secret
        self.jwt_secret = configured_secret
        self._token_cache: tuple[str, float, str] | None = None

    def rotate(self, new_secret: str) -> None:
        self.jwt_secret = new_secret

    def restore(self) -> None:
        self.jwt_secret = self.configured_secret

    def verify_token(self, token: str) -> dict[str, Any]:
        return jwt.decode(
            token,
            self.jwt_secret,
            algorithms=[JWT_ALGORITHM],
            options={"require": ["sub"]},
        )

    def client_token(self) -> str:
        """The token the platform's own clients (background traffic) send: the current secret."""
        now = time.monotonic()
        cached = self._token_cache
        if cached and cached[0] == self.jwt_secret and cached[1] > now:
            return cached[2]
        token = sign_token(self.jwt_secret, subject="experiment-scheduler", ttl_seconds=900)
        self._token_cache = (self.jwt_secret, now + 600, token)
        return token

    def check(self) -> tuple[bool, str]:
        if not self.jwt_secret:
            return False, "signing secret not loaded"
        try:
            self.verify_token(sign_token(self.jwt_secret, subject="readiness", ttl_seconds=60))
        except jwt.PyJWTError as exc:
            return False, f"self-signed token rejected: {exc}"
        return True, "signing secret loaded, self-signed token verifies"
