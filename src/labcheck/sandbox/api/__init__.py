"""The sandbox platform API (`python -m labcheck.sandbox.api --config api.json`).

Modules, bottom up: `settings` (ApiSettings, logger); `auth`, `db`, `storage`, `traffic`;
`platform` (Metrics, Platform) uses them; `faults` uses `platform`; `app` (create_app) uses both;
`__main__` runs it. Only re-exports here (not `main`: runpy would import `__main__` twice).
"""

from __future__ import annotations

from labcheck.sandbox.api.app import create_app
from labcheck.sandbox.api.auth import sign_token
from labcheck.sandbox.api.platform import Platform
from labcheck.sandbox.api.settings import ApiSettings

__all__ = ["ApiSettings", "Platform", "create_app", "sign_token"]
