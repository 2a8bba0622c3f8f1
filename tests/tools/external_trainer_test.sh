#!/usr/bin/env bash
# Installs modalign into a temporary prefix, builds examples/external_trainer against it with
# find_package(modalign), and runs it: the losses work for a trainer that is not ours. The README's C++ block
# under "Use the losses in your own trainer" must be the example's training_loss.cpp between its markers.
set -euo pipefail
build=$1; src=$2
want=$(sed -n '/README-BEGIN/,/README-END/{//!p}' "$src/examples/external_trainer/training_loss.cpp")
got=$(awk '/^### Use the losses in your own trainer/{s=1} s && /^```cpp/{c=1; next} c && /^```/{exit} c' "$src/README.md")
if [ "$want" != "$got" ]; then
  echo "README's own-trainer C++ block differs from examples/external_trainer/training_loss.cpp:"
  diff <(echo "$want") <(echo "$got") || true
  exit 1
fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
cmake -S "$src/examples/external_trainer" -B "$tmp/build" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$tmp/prefix" >/dev/null
cmake --build "$tmp/build" -j 2 >/dev/null
"$tmp/build/external_trainer"
