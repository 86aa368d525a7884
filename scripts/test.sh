#!/usr/bin/env bash
# Set up (with test tools) and run every check: manifest, architecture, lint, test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test

.venv/bin/npe2 validate napari-unet
.venv/bin/lint-imports
.venv/bin/ruff check src tests benchmarks scripts

export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
chmod 700 "$XDG_RUNTIME_DIR"
# napari needs an OpenGL context: a virtual X server, 24-bit, large enough for screenshots.
xvfb-run -a -s "-screen 0 1280x1024x24" .venv/bin/python -m pytest "$@"
