#!/usr/bin/env bash
# Installs modalign into a temporary prefix, builds examples/external_trainer against it with
# find_package(modalign), and runs it: the losses work for a trainer that is not ours.
set -euo pipefail
build=$1; src=$2
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
cmake -S "$src/examples/external_trainer" -B "$tmp/build" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$tmp/prefix" >/dev/null
cmake --build "$tmp/build" -j 2 >/dev/null
"$tmp/build/external_trainer"
