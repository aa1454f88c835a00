#!/usr/bin/env bash
# Idempotent set-up: Debian packages for offscreen rendering/video, a Python 3.12 venv at .venv, the project.
# Safe to rerun; a finished step is skipped. See ../shared/design/STACK.md for why each quirk is here.
set -euo pipefail
cd "$(dirname "$0")/.."

# Offscreen MuJoCo (EGL/OSMesa on Mesa llvmpipe) and video encode/decode.
DEB_PKGS="libosmesa6 libegl1 libegl-mesa0 libgl1-mesa-dri ffmpeg"
missing=$(for p in $DEB_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; else SUDO="none"; fi
  if [ "$SUDO" = none ]; then
    echo "setup: missing Debian packages ($missing); install them as root and rerun." >&2; exit 1
  fi
  echo "setup: installing Debian packages: $missing"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

# Python 3.12 (lerobot >= 0.5 needs it): python3.12 on PATH first, then pyenv.
find_python() {
  if command -v python3.12 >/dev/null && python3.12 -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
    command -v python3.12; return
  fi
  if command -v pyenv >/dev/null; then
    for v in $(pyenv versions --bare | grep -E '^3\.12(\.|$)' | sort -rV); do
      p="$(pyenv root)/versions/$v/bin/python"; [ -x "$p" ] && { echo "$p"; return; }
    done
  fi
  return 1
}

if [ ! -x .venv/bin/python ]; then
  PY=$(find_python) || { echo "setup: Python 3.12 not found (python3.12 on PATH or pyenv)" >&2; exit 1; }
  echo "setup: creating .venv with $PY"
  "$PY" -m venv .venv
fi

stamp=.venv/.installed-$(cat pyproject.toml scripts/setup.sh | sha1sum | cut -c1-12)
if [ ! -f "$stamp" ]; then
  echo "setup: installing the project into .venv (first time: a few minutes, ~7 GB with torch)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[dev]"
  # robosuite 1.5.2 declares mink==0.0.5 (numpy<2), which conflicts with lerobot; its real needs are in pyproject.
  .venv/bin/python -m pip install -q --no-deps "robosuite==1.5.2"
  rm -f .venv/.installed-*; touch "$stamp"
fi
echo "setup: ready (.venv/bin holds sim-record, sim-eval, vst-data, vst-bench, vst-train, vla-train, vla-compare)"
