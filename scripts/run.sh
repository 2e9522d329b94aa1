#!/usr/bin/env bash
# Quick start: set everything up, then run the main job, the default sweep.
# Extra arguments go to `sweep launch` (e.g. --n-trials 10).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# --join: run again, it continues the same study instead of refusing.
exec .venv/bin/sweep launch --join studies/deep_retrieval.toml "$@"
