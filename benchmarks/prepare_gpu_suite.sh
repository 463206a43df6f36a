#!/usr/bin/env bash
# Prepare .gpu_suite/ (git-ignored) for benchmarks/gpu_suite.sh, here, where pip and SimpleITK work:
#   whl/         cp312 x86-64 wheels of what the GPU machine's image lacks (monai, zarr and its codecs)
#   bench.zarr   10 small synthetic scans, one per subset: the patches gpu_step.py streams and the
#                short training run that detect uses
#   full.zarr    3 full-size synthetic scans (512x512, ~300 slices) with --volumes: what detect is timed on
# Usage: benchmarks/prepare_gpu_suite.sh [DIR]   (then: carry DIR, run benchmarks/gpu_suite.sh DIR)
set -euo pipefail
DIR=${1:-.gpu_suite}
BIN=${BIN:-$(dirname "$(command -v luna-prep || echo .venv/bin/luna-prep)")}
PY="$BIN/python"
mkdir -p "$DIR/whl"
rm -f "$DIR"/whl/*.whl
# the versions this checkout is tested with; --no-deps: the image has numpy, packaging, typing_extensions
pkgs=()
for name in monai zarr numcodecs donfig google-crc32c; do
  pkgs+=("$name==$("$PY" -c "import importlib.metadata as m; print(m.version('$name'))")")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$DIR/whl" "${pkgs[@]}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ ! -d "$DIR/bench.zarr" ]; then
  "$BIN/luna-prep" synth --out "$work/small" --scans 10 --seed 0
  "$BIN/luna-prep" build --data-root "$work/small" --subsets 0-9 --out "$DIR/bench.zarr" --workers 2 --quiet --no-card
fi
if [ ! -d "$DIR/full.zarr" ]; then
  "$BIN/luna-prep" synth --out "$work/full" --scans 3 --seed 1 --full-size
  "$BIN/luna-prep" build --data-root "$work/full" --subsets 0-2 --out "$DIR/full.zarr" --volumes --workers 2 \
    --quiet --no-card
fi
du -sh "$DIR"/* && du -sh "$DIR"
