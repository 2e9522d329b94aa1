#!/usr/bin/env bash
# Set everything up, then run the whole test suite (slow end-to-end tests
# included) and the linter. Extra arguments go to pytest (e.g. -m "not slow").
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the tests drive for real: a PostgreSQL server, and Chromium
# with its WebDriver for the MLflow UI tests.
need=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "note: ${need[*]} missing and not installable here (needs root and" \
      "apt-get); the tests that need it will be skipped" >&2
  fi
fi

bash scripts/setup.sh
.venv/bin/ruff check sweep tests benchmarks
.venv/bin/ruff format --check sweep tests benchmarks
# Three workers, each taking whole test modules (so a module's fixtures, a
# launched study or a server, are made once; tests/conftest.py keeps the smoke
# study's readers together). The suite is sized for two cores: much of a test
# is waiting on a sweep process or a server, so one worker more than the cores
# keeps them busy. `-n 0`: one process.
exec .venv/bin/python -m pytest -n 3 --dist loadfile "$@"
