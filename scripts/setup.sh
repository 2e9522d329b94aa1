#!/usr/bin/env bash
# Creates .venv holding sweep and its pinned dependency ranges. Idempotent: once
# installed, it only reinstalls when pyproject.toml changes.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
stamp=.venv/.sweep-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  # uv installs the same versions as pip, faster (it unpacks and
  # byte-compiles on every core); pip does it where uv cannot be had or
  # cannot reach the index. Byte-compiled either way: a process that finds no
  # .pyc compiles its imports from source each time it starts when
  # PYTHONDONTWRITEBYTECODE is set.
  if .venv/bin/python -m pip install --quiet uv 2>/dev/null &&
    .venv/bin/uv pip install --quiet --python .venv/bin/python \
      --compile-bytecode -e ".[test]"; then
    :
  else
    .venv/bin/python -m pip install --quiet -e ".[test]"
  fi
  touch "$stamp"
fi
