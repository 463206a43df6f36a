#!/usr/bin/env bash
# The GPU measurements of docs/benchmarks.md ("GPU training step") in one call of at most ~8 minutes on a lent
# GPU machine (python3.12 + CUDA torch, no SimpleITK/zarr/MONAI: those come as wheels in DIR/whl); the steps'
# limits add up to 490 s:
#
#   here:   benchmarks/prepare_gpu_suite.sh              # fills .gpu_suite/whl (git-ignored), once
#   there:  bash benchmarks/gpu_suite.sh                 # device run: carry [".gpu_suite"], timeout_s 540
#           (a step that runs out of time still leaves what it measured: gpu_step.py writes its JSON as it goes)
#   CPU:    bash benchmarks/gpu_suite.sh --quick         # the same steps with tiny sizes (checks the script)
#
# Steps, each under its own time limit so a slow one still leaves the others' JSON: install the wheels
# (if torch's python lacks them), write the stores (benchmarks/suite_stores.py), the loader alone with 1, 4, 8
# and cores - 2 workers, gpu_step.py (eager baseline,
# optimized model only, end to end with 8 loader workers, the recommended count on 10+ cores, and with every
# spare core), a short luna-train run
# of configs/luna16.yaml, then `luna-train detect --json` over 3 full-size scans. $OUT gets 5 files: suite.txt,
# logs.txt, loader.json, gpu_step.json, detect.json.
set -uo pipefail
QUICK=0
DIR=.gpu_suite
for arg in "$@"; do
  case $arg in
    --quick) QUICK=1 ;;
    *) DIR=$arg ;;
  esac
done
OUT=${OUT:-$PWD/gpu_suite_out}   # git-ignored
if [ -x .venv/bin/python ]; then PY=${PYTHON:-.venv/bin/python}; else PY=${PYTHON:-python3}; fi  # here: make's venv
WORK=$(mktemp -d)
mkdir -p "$OUT"
rm -f "$OUT/logs.txt"
export PYTHONUNBUFFERED=1
if ! "$PY" -c "import monai, zarr, numcodecs" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$DIR"/whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
CORES=$(nproc)
REC=$(( CORES > 3 ? CORES - 2 : 1 ))   # every spare core (all but the training process's main and pin threads);
                                       # docs/benchmarks.md recommends min(8, cores - 2): 8 is measured too
if [ $QUICK = 1 ]; then
  STORE_ARGS=(--scans 10 --samples 12); VOL_ARGS=(--scans 2 --shape 96,112,112)  # > 8 a scan: shards fill
  STEP_ARGS=(--steps 3 --warmup 2 --batch 4 --set 'model.channels=[4,8]' --set 'model.strides=[2]'
             --set model.num_res_units=1 --set data.train_size=32 --set data.eval_scale=48)
  RUN_ARGS=(--set 'model.channels=[4,8]' --set 'model.strides=[2]' --set model.num_res_units=1
            --set data.train_size=32 --set data.eval_scale=48 --set data.batch_size=4 --set data.num_workers=1
            --set sampler.samples_per_epoch=8)
  LIMITS=(120 120 400 180 180)  # seconds per step: stores, loader, gpu_step, train, detect (a slow shared CPU)
  WORKERS=(--workers 1 --workers 2); LOADER_BATCHES=3; LOADER_WORKERS=(--workers 1 --workers 2)
else
  STORE_ARGS=(--scans 10 --samples 32); VOL_ARGS=(--scans 3)
  STEP_ARGS=(--steps 200 --warmup 20 --batch 32)
  RUN_ARGS=(--set sampler.samples_per_epoch=320 --set data.num_workers=8 --set train.compile=false)
  LIMITS=(45 45 250 90 60)  # 490 s in all
  WORKERS=(--workers 8 --workers "$REC"); LOADER_BATCHES=60
  LOADER_WORKERS=(--workers 1 --workers 4 --workers 8 --workers "$REC")
fi
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, report the status
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$WORK/$name.log" 2>&1
  local rc=$?
  echo "$name: exit $rc after $(( SECONDS - t0 )) s" | tee -a "$OUT/suite.txt"
  { echo "===== $name (exit $rc)"; cat "$WORK/$name.log"; } >>"$OUT/logs.txt"  # the device returns <= 8 files
  [ $rc = 0 ] || tail -20 "$WORK/$name.log"
  return $rc
}
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null; echo "cores $CORES";
  "$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())";
  df -h /dev/shm | tail -1; } >"$OUT/suite.txt" 2>&1  # loader batches travel through /dev/shm
step stores "${LIMITS[0]}" bash -c "'$PY' benchmarks/suite_stores.py patches '$WORK/bench.zarr' ${STORE_ARGS[*]} &&
  '$PY' benchmarks/suite_stores.py volumes '$WORK/full.zarr' ${VOL_ARGS[*]}" || exit 1
step loader "${LIMITS[1]}" "$PY" benchmarks/gpu_step.py --store "$WORK/bench.zarr" --loader-only device-resize \
  --steps "$LOADER_BATCHES" "${LOADER_WORKERS[@]}" --json "$OUT/loader.json"
step gpu_step "${LIMITS[2]}" "$PY" benchmarks/gpu_step.py --store "$WORK/bench.zarr" "${STEP_ARGS[@]}" "${WORKERS[@]}" \
  --json "$OUT/gpu_step.json"
step train "${LIMITS[3]}" "$PY" -m luna_train.cli.main run --config configs/luna16.yaml --dataset "$WORK/bench.zarr" \
  --out "$WORK/run" --set train.epochs=1 --set logging.tensorboard=false --set logging.plots=false \
  --set logging.progress=false "${RUN_ARGS[@]}" \
  && step detect "${LIMITS[4]}" "$PY" -m luna_train.cli.main detect "$WORK/run" --dataset "$WORK/full.zarr" --subsets 0-2 \
  --out "$WORK/submission.csv" --json "$OUT/detect.json"
cat "$OUT/suite.txt"
"$PY" - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])

def show(name, fn):
    path = out / name
    if path.is_file():
        try:
            fn(json.loads(path.read_text()))
        except (KeyError, TypeError, ZeroDivisionError) as exc:
            print(f"{name}: incomplete ({exc!r})")

def gpu_step(r):
    mo = r["model_only"]["patches_per_s"]
    print(f"{r['device']}: baseline {r['baseline_model_only']['patches_per_s']:.0f}, optimized model only "
          f"{mo:.0f} patches/s (x{mo / r['baseline_model_only']['patches_per_s']:.2f}), peak "
          f"{r['model_only']['peak_gpu_memory_gb']} GB")
    for e in r["end_to_end"]:
        print(f"  end to end, {e['workers']} workers: {e['patches_per_s']:.0f} patches/s "
              f"({e['patches_per_s'] / mo:.2f} of model only), data wait {100 * e['data_wait_share']:.1f}%")

def loader(r):
    print("loader alone: " + ", ".join(f"{e['workers']} workers {e['patches_per_s']:.0f}" for e in r["loader"])
          + " patches/s")

def detect(d):
    print(f"detect on {d['device']}, {d['n_scans']} scans, windows per pass {d['sw_batch_size']}:")
    for t in d["timings"]:
        print(f"  {t['shape']}: read {t['read_s']:.2f} s, sliding window {t['sliding_window_s']:.2f} s, "
              f"candidates {t['candidates_s']:.2f} s, total {t['total_s']:.2f} s")

show("gpu_step.json", gpu_step)
show("loader.json", loader)
show("detect.json", detect)
PY
rm -rf "$WORK"
