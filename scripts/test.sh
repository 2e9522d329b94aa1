#!/usr/bin/env bash
# Set everything up, then run the whole test suite (slow end-to-end tests
# included) and the linter. Extra arguments go to pytest (e.g. -m "not slow").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check sweep tests benchmarks
.venv/bin/ruff format --check sweep tests benchmarks
exec .venv/bin/python -m pytest "$@"
