#!/usr/bin/env bash
# labcheck quickstart for a fresh Debian 12 machine with Python 3.11+.
#   ./quickstart.sh triage   install what is missing, bring up the sandbox, print a triage
#   ./quickstart.sh test     install what is missing, run labcheck's own tests
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

need_apt=()
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
command -v prometheus-pushgateway >/dev/null 2>&1 || need_apt+=(prometheus-pushgateway)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
command -v kubectl >/dev/null 2>&1 || need_apt+=(kubernetes-client)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v jq >/dev/null 2>&1 || need_apt+=(jq)
command -v npm >/dev/null 2>&1 || need_apt+=(nodejs npm)
# The Allure report's browser test runs Debian's Chromium.
if [ "${1:-}" = "test" ]; then
  command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "quickstart: installing Debian packages: ${need_apt[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# Debian's packages start their own services where an init system runs them: the sandbox runs its own.
for svc in prometheus prometheus-pushgateway postgresql; do
  $SUDO systemctl stop "$svc" >/dev/null 2>&1 || true
done

echo "quickstart: installing labcheck and its dependencies (pip)"
$PYTHON -m pip install -q --disable-pip-version-check -e '.[dev]' 2>&1 | grep -v '^WARNING: Location' || true
$PYTHON -c "import labcheck.plugin, starlette, moto, psycopg_pool, prometheus_fastapi_instrumentator, starlette_exporter, opentelemetry.exporter.prometheus, matplotlib" || { echo "quickstart: pip install failed" >&2; exit 1; }

# Allure 3 (npm package `allure`, no Java) for `labcheck report`, pinned by node/package-lock.json.
if [ ! -x node/node_modules/.bin/allure ]; then
  echo "quickstart: installing Allure 3 (npm)"
  npm ci --prefix node --no-audit --no-fund --loglevel=error >/dev/null
fi

case "${1:-}" in
  triage)
    $PYTHON -m labcheck.cli sandbox up
    shift
    set +e
    $PYTHON -m pytest checks "$@"
    rc=$?
    set -e
    echo "quickstart: triage written to reports/triage.json and reports/incident.md;" \
         "stop the sandbox with: labcheck sandbox down"
    exit $rc
    ;;
  test)
    shift
    set +e
    $PYTHON -m pytest tests -p no:randomly "$@"
    rc=$?
    set -e
    if [ $rc -eq 5 ]; then echo "quickstart: no tests ran" >&2; exit 1; fi
    exit $rc
    ;;
  *)
    echo "usage: ./quickstart.sh triage|test [pytest options]" >&2
    exit 2
    ;;
esac
