#!/usr/bin/env bash
# One call on the lent GPU machine: install the carried wheels, restore Triton's autotune
# results from earlier calls, run each step under its own time limit, and pack what every step
# wrote into one file per step (the device tool returns at most 8 files from $OUT).
#
#   bash bench/device_run.sh 'SECONDS NAME COMMAND...' ['SECONDS NAME COMMAND...' ...]
#
# Each step runs from the repo root with $STEP_OUT set to its own folder (write results there)
# and its output in $STEP_OUT/log.txt; a step over its time is stopped and the next one runs, so
# one slow step costs only its own results. Out come NAME.tgz per step and triton_autotune.tgz:
# the `*.autotune.json` files Triton's autotuner (flash-linear-attention's kernels use it)
# wrote, which a later call finds again if the repo has them, extracted, in .triton_autotune/
# (ignored; carry it): FLA's autotuning of a fwd+bwd took more than 100 s of a call's budget.
# gpu.txt holds the GPU's clocks, power and throttle state at the start of the call.
#
# Example (carry: [".whl", ".anchors", ".triton_autotune"]):
#   bash bench/device_run.sh \
#     '200 std2 python3 -m scandsl.bench run --part std2 --out $STEP_OUT --budget-s 180' \
#     '60 prof python3 bench/gpu_profile.py --op deltanet --shape 4,4096,16,128,128 --out $STEP_OUT/prof.json'
# Afterwards, here: for f in FILES_AT/*.tgz; do tar xzf "$f" -C /tmp/run; done, and
#   mkdir -p .triton_autotune && tar xzf FILES_AT/triton_autotune.tgz -C .triton_autotune
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?device_run.sh: OUT must name the folder the device tool returns}"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation -e .
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-/tmp/triton_cache}"
mkdir -p "$TRITON_CACHE_DIR"
if [ -d .triton_autotune ]; then
    cp -r .triton_autotune/. "$TRITON_CACHE_DIR"/
fi
# the machine: the same GPU model has timed a latency-bound kernel 2x apart on different lent
# machines (docs/performance.md), so every call records clocks, power and throttle reasons
{ nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
  nvidia-smi -q -d CLOCK,POWER,PERFORMANCE,TEMPERATURE; } > "$OUT/gpu.txt" 2>&1 || true
for step in "$@"; do
    read -r secs name cmd <<< "$step"
    if ! [[ "$secs" =~ ^[0-9]+$ ]] || [ -z "$name" ] || [ -z "$cmd" ]; then
        echo "device_run.sh: a step is 'SECONDS NAME COMMAND...', got: $step" >&2
        continue
    fi
    export STEP_OUT="$OUT/$name"
    mkdir -p "$STEP_OUT"
    start=$(date +%s)
    timeout "$secs" bash -c "$cmd" > "$STEP_OUT/log.txt" 2>&1
    rc=$?
    echo "[$name] rc=$rc after $(( $(date +%s) - start )) s: $(tail -n 4 "$STEP_OUT/log.txt" | tr '\n' ' ' | cut -c1-400)"
    tar czf "$OUT/$name.tgz" -C "$OUT" "$name" && rm -rf "$STEP_OUT"
done
(cd "$TRITON_CACHE_DIR" && find . -name '*.autotune.json' | tar czf "$OUT/triton_autotune.tgz" -T -)
