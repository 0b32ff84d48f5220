"""The sandbox platform API: experiments, datasets, health, Prometheus metrics, traffic and faults."""

from __future__ import annotations

import logging

from prometheus_client import disable_created_metrics

from labcheck.sandbox.api.app import create_app
from labcheck.sandbox.api.settings import ApiSettings
from labcheck.sandbox.serve import parse_args, serve


def main(argv: list[str] | None = None) -> int:
    args = parse_args("api", __doc__, argv, quiet=(("psycopg.pool", logging.ERROR),))
    disable_created_metrics()
    settings = ApiSettings.load(args.config)
    app = create_app(settings)
    return serve(app, host=settings.host, port=settings.port, log_level=args.log_level,
                 server_header=False, date_header=False)


if __name__ == "__main__":
    raise SystemExit(main())
