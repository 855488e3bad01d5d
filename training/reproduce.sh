#!/usr/bin/env bash
# Every recipe from one base checkpoint, equal epochs, five seeds, plus SharedCLIP and its equal-size CLIP
# from scratch; writes training/RESULTS.md (mean and 95 % interval of each paired difference).
# Meant to stay under 45 minutes on 2 CPU cores. Arguments go to training.reproduce (see its --help).
set -euo pipefail
cd "$(dirname "$0")/.."
make setup
exec .venv/bin/python -m training.reproduce "$@"
