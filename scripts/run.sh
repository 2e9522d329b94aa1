#!/usr/bin/env bash
# Quick start: set everything up, then run the main job. Extra arguments go to
# `sweep train` (e.g. --epochs 10).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The reference configuration: depth 1, width 32, embedding 32, Adagrad 0.05.
exec .venv/bin/sweep train --depth 1 --width 32 --embedding-dim 32 \
  --learning-rate 0.05 --epochs 30 --validation-freq 5 "$@"
