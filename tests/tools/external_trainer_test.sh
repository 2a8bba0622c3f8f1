#!/usr/bin/env bash
# Installs modalign into a temporary prefix, builds examples/external_trainer against it with
# find_package(modalign), and runs it: the losses work for a trainer that is not ours, with only LibTorch (the other
# dependencies made unfindable) and a LibTorch under another prefix than the one modalign was built with.
set -euo pipefail
build=$1; src=$2
# The README's C++ blocks under "Use the losses in your own trainer", in order, are the example's files between
# their markers: training_loss.cpp (dense maps), then tapped_loss.cpp (blockwise attention with taps).
n=0
for file in training_loss.cpp tapped_loss.cpp; do
  n=$((n + 1))
  want=$(sed -n '/README-BEGIN/,/README-END/{//!p}' "$src/examples/external_trainer/$file")
  got=$(awk -v n="$n" '/^### Use the losses in your own trainer/{s=1; next} s && /^##/{exit}
                       s && /^```cpp/{k++; if (k == n) {c=1; next}} c && /^```/{exit} c' "$src/README.md")
  if [ -z "$want" ] || [ "$want" != "$got" ]; then
    echo "README's own-trainer C++ block $n differs from examples/external_trainer/$file:"
    diff <(echo "$want") <(echo "$got") || true
    exit 1
  fi
done
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
# The losses' package must name no path of the LibTorch it was built with, nor any other dependency.
if grep -n '/usr/\|fmt::\|spdlog\|yaml-cpp\|nlohmann' "$tmp"/prefix/lib*/cmake/modalign/modalign{Losses,Attention}Targets*.cmake; then
  echo "modalign::losses' or ::attention's installed targets name a path or a library beyond LibTorch, OpenMP and BLAS (above)"; exit 1
fi
# "A LibTorch that is not Debian's": the same LibTorch relocated under another prefix (its CMake files copied,
# its libraries and headers linked), found first through the consumer's CMAKE_PREFIX_PATH.
torch_dir=$(sed -n 's/^Torch_DIR:PATH=//p' "$build/CMakeCache.txt")
arch_lib=$(dirname "$(dirname "$torch_dir")")   # <prefix>/lib/<arch>
other=$tmp/other-libtorch; mkdir -p "$other/lib/$(basename "$arch_lib")/cmake" "$other/include"
cp -r "$torch_dir" "$(dirname "$torch_dir")/Caffe2" "$other/lib/$(basename "$arch_lib")/cmake/"
for lib in "$arch_lib"/lib{c10,torch,torch_cpu,torch_global_deps,shm}.so*; do
  [ -e "$lib" ] && ln -s "$lib" "$other/lib/$(basename "$arch_lib")/"
done
for inc in ATen c10 caffe2 torch; do ln -s "$(dirname "$(dirname "$arch_lib")")/include/$inc" "$other/include/$inc"; done
# A consumer with only LibTorch: finding any of the library component's dependencies is made an error.
cmake -S "$src/examples/external_trainer" -B "$tmp/build" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$tmp/prefix;$other" \
  -DCMAKE_DISABLE_FIND_PACKAGE_fmt=ON -DCMAKE_DISABLE_FIND_PACKAGE_spdlog=ON \
  -DCMAKE_DISABLE_FIND_PACKAGE_yaml-cpp=ON -DCMAKE_DISABLE_FIND_PACKAGE_nlohmann_json=ON >/dev/null
used=$(sed -n 's/^Torch_DIR:PATH=//p' "$tmp/build/CMakeCache.txt")
case "$used" in "$other"/*) ;; *) echo "the consumer found LibTorch at $used, not the relocated copy"; exit 1 ;; esac
cmake --build "$tmp/build" -j 2 >/dev/null
"$tmp/build/external_trainer"
