#!/usr/bin/env bash
# Set up napari-unet in ./.venv on a fresh machine.
#   bash scripts/setup.sh           runtime (enough for the CLI, the API and the demo)
#   bash scripts/setup.sh --test    plus the test tools, Qt (PyQt6) and the system libraries
#                                   that napari needs under a virtual X server (Xvfb)
# TORCH_SPEC selects the torch build (default: torch==2.13.0, the CPU build used in CI);
# on a GPU machine use e.g. TORCH_SPEC="torch>=2.2".
set -euo pipefail
cd "$(dirname "$0")/.."

WITH_TEST=0
[ "${1:-}" = "--test" ] && WITH_TEST=1
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"

if [ "$WITH_TEST" = 1 ] && command -v apt-get >/dev/null 2>&1; then
  # Xvfb + Qt6 + Mesa GL for headless napari (see docs/development.md).
  PKGS="xvfb xauth libegl1 libgl1 libfontconfig1 libglib2.0-0 libdbus-1-3 libxkbcommon0 \
libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-shape0 \
libxcb-randr0 libxcb-render-util0 libxcb-image0 libxcb-xinerama0 libxcb-xkb1"
  MISSING=""
  for p in $PKGS; do
    dpkg -s "$p" >/dev/null 2>&1 || MISSING="$MISSING $p"
  done
  if [ -n "$MISSING" ]; then
    SUDO=""
    [ "$(id -u)" != 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $MISSING
  fi
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first, from its own spec, so the project's "torch>=2.2" keeps it.
.venv/bin/python -m pip install -q "$TORCH_SPEC"
if [ "$WITH_TEST" = 1 ]; then
  .venv/bin/python -m pip install -q -e '.[testing,distributed,bioimageio,onnx,figures,formats]'
else
  .venv/bin/python -m pip install -q -e .
fi
.venv/bin/python -c "import torch, napari_unet; print('napari-unet', napari_unet.__version__, '| torch', torch.__version__, '| CUDA', torch.cuda.is_available())"
