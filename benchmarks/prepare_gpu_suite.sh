#!/usr/bin/env bash
# Prepare .gpu_suite/ (git-ignored) for benchmarks/gpu_suite.sh, here, where pip works: DIR/whl holds the cp312
# x86-64 wheels of what the GPU machine's image lacks (MONAI, zarr and its codecs; about 11 MB). The stores are
# written on the GPU machine itself (benchmarks/suite_stores.py), so nothing else travels.
# Usage: benchmarks/prepare_gpu_suite.sh [DIR]   (then carry DIR and run benchmarks/gpu_suite.sh DIR there)
set -euo pipefail
DIR=${1:-.gpu_suite}
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3)}
mkdir -p "$DIR/whl"
rm -f "$DIR"/whl/*.whl
# the versions this checkout is tested with; --no-deps: the image has numpy, packaging, pyyaml, typing_extensions
pkgs=()
for name in monai zarr numcodecs donfig google-crc32c; do
  pkgs+=("$name==$("$PY" -c "import importlib.metadata as m; print(m.version('$name'))")")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$DIR/whl" "${pkgs[@]}"
du -sh "$DIR/whl"
