"""python -m labcheck.sandbox.kube --config kube.json: serve the stand-in until SIGTERM."""

from __future__ import annotations

import os
import sys
from typing import Any

from labcheck.sandbox import kube
from labcheck.sandbox.kube.app import create_app, log
from labcheck.sandbox.kube.model import KubeConfig
from labcheck.sandbox.kube.tls import ensure_tls_files
from labcheck.sandbox.serve import parse_args, serve


def main(argv: list[str] | None = None) -> int:
    args = parse_args("kube", kube.__doc__, argv)
    try:
        cfg = KubeConfig.load(args.config)
    except (OSError, ValueError) as exc:
        print(f"kube stand-in: bad config: {exc}", file=sys.stderr)
        return 2
    if os.stat(args.config).st_mode & 0o077:
        log.warning(
            "%s is readable by group/others; it holds secrets (want mode 0600)", args.config
        )
    tls: dict[str, Any] = {}
    if cfg.tls_cert and cfg.tls_key:
        ensure_tls_files(cfg.tls_cert, cfg.tls_key, ("127.0.0.1", "localhost", cfg.host))
        tls = {"ssl_certfile": cfg.tls_cert, "ssl_keyfile": cfg.tls_key}
    log.info(
        "Kubernetes API stand-in on %s://%s:%d (namespace %s)",
        cfg.scheme,
        cfg.host,
        cfg.port,
        cfg.namespace,
    )
    app = create_app(cfg)
    return serve(app, host=cfg.host, port=cfg.port, log_level=args.log_level, graceful_s=2, **tls)


if __name__ == "__main__":
    sys.exit(main())
