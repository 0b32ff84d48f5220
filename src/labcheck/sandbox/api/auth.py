"""Bearer tokens of the sandbox API: HS256 JWTs signed with a secret that a fault can rotate,
validated against the API's own clock, which a fault can skew."""

from __future__ import annotations

import random
import time
from typing import Any

import jwt

from labcheck.sandbox.api.settings import APP_NAME

JWT_ALGORITHM = "HS256"
# The platform's own clients use short-lived access tokens, renewed at half their lifetime.
CLIENT_TOKEN_TTL_S = 60
# After a rotation, the share of client requests made by clients that picked up the new secret;
# the others were provisioned with the old one and keep signing with it.
CLIENT_REFRESH_SHARE = 0.2


def sign_token(
    secret: str, subject: str = "labcheck", ttl_seconds: int = 3600, now: float | None = None
) -> str:
    """An HS256 bearer token the API accepts while `secret` is its signing secret.

    `now` is the signer's clock (default: the real one)."""
    issued = int(time.time() if now is None else now)
    claims = {"sub": subject, "iat": issued, "exp": issued + ttl_seconds, "iss": APP_NAME}
    return jwt.encode(claims, secret, algorithm=JWT_ALGORITHM)


class Auth:
    """The signing secret in use (the configured one unless rotated), the API's clock (real unless
    skewed), and the checks made with them."""

    def __init__(self, configured_secret: str) -> None:
        self.configured_secret = configured_secret
        self.jwt_secret = configured_secret
        self.skew_s = 0.0
        self._client_tokens: dict[tuple[str, str], tuple[float, str]] = {}

    def rotate(self, new_secret: str) -> None:
        self.jwt_secret = new_secret

    def restore(self) -> None:
        self.jwt_secret = self.configured_secret

    def now(self) -> float:
        """The API's clock: the real one plus the clock-skew fault's offset."""
        return time.time() + self.skew_s

    def verify_token(self, token: str) -> dict[str, Any]:
        """The claims of a token signed with the current secret and valid by the API's clock.

        PyJWT would judge exp/nbf/iat by the real clock, so its time checks are off and the same
        checks (PyJWT's rules, no leeway) are made against `now()`: a skewed API refuses tokens
        that are valid elsewhere, as one with a drifting clock does.
        """
        claims: dict[str, Any] = jwt.decode(
            token,
            self.jwt_secret,
            algorithms=[JWT_ALGORITHM],
            options={"require": ["sub"], "verify_exp": False, "verify_nbf": False,
                     "verify_iat": False},
        )
        now = self.now()
        times = {}
        for claim in ("exp", "nbf", "iat"):
            if claim in claims:
                value = claims[claim]
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise jwt.DecodeError(f"{claim} must be a number")
                times[claim] = float(value)
        if "exp" in times and now >= times["exp"]:
            raise jwt.ExpiredSignatureError("Signature has expired")
        for claim in ("nbf", "iat"):
            if claim in times and times[claim] > now:
                raise jwt.ImmatureSignatureError(f"The token is not yet valid ({claim})")
        return claims

    def client_token(self, subject: str = "experiment-scheduler") -> str:
        """The token one of the platform's own clients (background traffic), signed in as ``subject``, sends.

        Clients sign with the real clock and the secret they were provisioned with: after a
        rotation most keep the old one, only CLIENT_REFRESH_SHARE of their requests use the new.
        """
        secret = self.configured_secret
        if self.jwt_secret != secret and random.random() < CLIENT_REFRESH_SHARE:
            secret = self.jwt_secret
        now = time.time()
        cached = self._client_tokens.get((secret, subject))
        if cached and cached[0] > now:
            return cached[1]
        token = sign_token(secret, subject=subject, ttl_seconds=CLIENT_TOKEN_TTL_S)
        kept = (self.configured_secret, self.jwt_secret)
        self._client_tokens = {k: v for k, v in self._client_tokens.items() if k[0] in kept}
        self._client_tokens[(secret, subject)] = (now + CLIENT_TOKEN_TTL_S / 2, token)
        return token

    def check(self) -> tuple[bool, str]:
        """Readiness: a token the API signs with its own clock and secret verifies."""
        if not self.jwt_secret:
            return False, "signing secret not loaded"
        try:
            self.verify_token(
                sign_token(self.jwt_secret, subject="readiness", ttl_seconds=60, now=self.now())
            )
        except jwt.PyJWTError as exc:
            return False, f"self-signed token rejected: {exc}"
        return True, "signing secret loaded, self-signed token verifies"
