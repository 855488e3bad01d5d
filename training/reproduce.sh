#!/usr/bin/env bash
# Every recipe from one base checkpoint, equal epochs, two seeds; writes training/RESULTS.md.
# About 15 minutes on 2 CPU cores. Arguments go to training.reproduce (see its --help).
set -euo pipefail
cd "$(dirname "$0")/.."
make setup
exec .venv/bin/python -m training.reproduce "$@"
