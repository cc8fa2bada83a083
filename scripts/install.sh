#!/usr/bin/env bash
# Installs BirdsDao on a fresh Debian machine: system packages, then a virtual environment in .venv.
# Usage: bash scripts/install.sh        (re-running it is safe and fast)
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
# nginx: the deployment test; chromium + chromium-driver: the page's browser tests;
# fonts-wqy-microhei: CJK glyphs for the species names drawn on annotated photos.
PKGS="nginx chromium chromium-driver fonts-wqy-microhei"
missing=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
# a Java runtime: METEOR in `python -m birdsdao.train score captions` (pycocoevalcap runs its jar); any java will do
command -v java >/dev/null 2>&1 || missing="$missing default-jre-headless"
if [ -n "$missing" ]; then
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $missing
fi

PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements-dev.txt
echo "BirdsDao installed in $(pwd)/.venv"
