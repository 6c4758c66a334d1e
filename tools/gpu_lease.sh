#!/usr/bin/env bash
# One GPU lease, unattended: continue a checkpoint's training on the lent machine until shortly
# before the command's time is up, then bring back the model, its metrics and the logs.
#
# Here, once per session (the lent machine has no network and lacks two of our packages):
#   python tools/prepare_default_data.py --shared ../shared/data && python tools/gather_fonts.py
#   echo /.whl/ >> .git/info/exclude && python3 -m pip download --no-deps --only-binary=:all: \
#       --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
#       --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl lmdb editdistance
# Then with the device tool: run `bash tools/gpu_lease.sh`, carry [".whl", "data/gpu"], timeout_s 600.
#
# What it does (times from the script's start; LEASE_SECONDS is the command's own limit):
#   1. installs the carried wheels, records the machine (GPU, torch), checks the GPU code paths in seconds
#      (tools/device_check.py: a failing one gets its fallback) and samples GPU use every 5 s;
#      with DATA_SPEED_SECONDS=N, first times the data path and training steps apart (benchmarks/data_speed.py);
#      times the recurrent layers against cuDNN's (benchmarks/rnn_speed.py, about 15 s; RNN_SPEED=0 skips it);
#   2. trains from INIT_FROM with the recipe and `--time-budget`: the cosine schedule ends, and the run stops,
#      RESERVE seconds before LEASE_SECONDS, at whatever rate the lease reaches (leases 2-4 instead fitted max_steps to
#      a 45-s probe, then resumed: lease 4's rate rose after its probe and it ended a minute early, and each resume
#      lost about 20 s restarting); a SIGTERM at that point saves the state if anything runs late. A run that
#      fails gets one more try, if a minute is left, with every GPU speed path off (the retry's "fallback" lines);
#   3. validates the last checkpoint on both protocols, exports best and last as float16, and
#      copies them with the logs to $OUT (the device tool brings that folder back).
# TRAIN_ARGS adds `textrec train` options to the run, e.g. vanilla gates over the refined recipe:
#   TRAIN_ARGS="--refine none --refine-gates all --refine-init default --refine-bound none --refine-rank 0"
# WIDTH_BUCKETS=N sets --width-buckets (width-bucketed batches; 0: full width), over the recipe's.
# MAX_STEPS=N trains a schedule of exactly N steps instead (a twin of an earlier run, with its INIT_FROM and
# SEED); it stops early, state saved, if the lease's time runs out first.
# SEED: the run's seed. Synthetic samples, their scene parameters and the real data's order are functions of
# (seed, step), and every lease starts again at step 0: with the recipe's one seed each lease would train on
# the previous lease's images again, in the same order. So each lease draws its own seed (logged) unless
# SEED is given (a twin gives its original's: lease 3 ran the recipe's seed, 2).
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
LEASE_SECONDS=${LEASE_SECONDS:-570}
RESERVE=${RESERVE:-45}  # lease 4's validation and export after training took 22 s
RECIPE=${RECIPE:-checkpoints/model2.toml}
INIT_FROM=${INIT_FROM:-checkpoints/default.safetensors}
RUN=${RUN:-runs/lease}
SEED=${SEED:-$(( $(date +%s) % 1000000 ))}
OUT=${OUT:-runs/lease_out}
mkdir -p "$OUT"
elapsed() { echo $(( $(date +%s) - T0 )); }
log() { echo "[lease $(elapsed)s] $*" | tee -a "$OUT/lease.log"; }

WHEELS=${WHEELS:-.whl}  # lmdb and editdistance for the machine's Python (3.12); "none" skips them
export PYTHONPATH=$PWD
if compgen -G "$WHEELS/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl \
        && export PYTHONPATH=/tmp/site:$PWD || { log "wheel install failed"; exit 1; }
fi
export PYTHONUNBUFFERED=1
# The main process only feeds the GPU; its threads would compete with the data workers.
export OMP_NUM_THREADS=2
textrec() { python3 -m cli.main "$@"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$OUT/lease.log"
python3 -c "import torch, PIL, lmdb, editdistance, typer, safetensors; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cpus', __import__('os').cpu_count())" 2>&1 | tee -a "$OUT/lease.log"
# Triton compiles its kernels' launchers with the machine's C compiler: both decide whether textrec.nn.triton_steps can run
python3 -c "import triton; print('triton', triton.__version__)" 2>&1 | tail -1 | tee -a "$OUT/lease.log"
{ command -v cc gcc || echo "no C compiler"; } 2>&1 | head -1 | tee -a "$OUT/lease.log"
# The GPU code paths, checked in seconds: a failure switches to a fallback instead of costing the lease.
FALLBACKS=$(timeout 150 python3 tools/device_check.py "$RECIPE" "$INIT_FROM" 2>> "$OUT/lease.log") || {
    log "device check did not finish (exit $?): the plainest paths from here"
    FALLBACKS="$FALLBACKS FINISH_AHEAD=0 TEXTREC_TRITON_RNN=0 TEXTREC_CUDA_GRAPHS=0"
}
for setting in $FALLBACKS; do export "$setting"; log "fallback: $setting"; done
SCENE_DEVICE=${SCENE_DEVICE:-auto}
# Batches finished ahead in a thread, on their own CUDA stream, while the step trains (docs/synth.md, "On the GPU")
FINISH_AHEAD=${FINISH_AHEAD:-2}
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 5 > "$OUT/gpu_util.csv" 2>&1 &
SAMPLER=$!
if [ "${DATA_SPEED_SECONDS:-0}" -gt 0 ]; then  # the data path and the steps measured apart (issue 10), into lease.log
    log "data speed: $DATA_SPEED_SECONDS s per part"
    timeout 200 python3 benchmarks/data_speed.py --device auto --workers "${WORKERS:-15}" --data-batch 1024 \
        --batch-sizes 256 1024 2048 --seconds "$DATA_SPEED_SECONDS" --warmup 10 --fonts data/gpu/fonts \
        --train-data synth:0.75 'data/gpu/real_train/*:0.25' >> "$OUT/lease.log" 2>&1
fi
if [ "${RNN_SPEED:-1}" = 1 ]; then  # issue 12's GPU target, about 15 s (RNN_SPEED=0 skips it): the shipped refined
    # LSTM layer against cuDNN's at the lease's shapes (T=41), TF32 as trained, with CUDA graphs unless the check turned them off;
    # also our own kernel's vanilla layer, and both with each step's work as torch ops instead of the Triton kernels
    log "recurrent layer speed"
    timeout 60 python3 benchmarks/rnn_speed.py --device cuda --modes lstm --variants add-io-vstart-tanh \
        --steps 41 --batch 1024 --train-repeats 8 --infer-repeats 10 >> "$OUT/lease.log" 2>&1
fi

read -r -a EXTRA <<< "${TRAIN_ARGS:-}"
EXTRA+=(--seed "$SEED")
# WIDTH_BUCKETS=N replaces the recipe's --width-buckets; the device check sets 0 where CUDA graphs fail at two widths.
# 0 also clears a --width-buckets-from of TRAIN_ARGS or the recipe, which textrec train refuses without buckets.
if [ -n "${WIDTH_BUCKETS:-}" ]; then
    EXTRA+=(--width-buckets "$WIDTH_BUCKETS")
    if [ "$WIDTH_BUCKETS" = 0 ]; then EXTRA+=(--width-buckets-from 0); fi
fi
log "train options: ${EXTRA[*]}"
# Leave time for the interpreter, the model and the data to load before the budget's clock starts (about 10 s), and
# for the last validation and save after it (a few s); the timeout below is the hard stop (SIGTERM saves the state).
STARTUP=${STARTUP:-15}
TRAIN_LEFT=$(( LEASE_SECONDS - RESERVE - $(elapsed) ))
[ "$TRAIN_LEFT" -lt 1 ] && TRAIN_LEFT=1
if [ -n "${MAX_STEPS:-}" ]; then  # a fixed schedule (a twin of an earlier run)
    log "fixed schedule: max_steps $MAX_STEPS from $INIT_FROM with $RECIPE"
    SCHEDULE=(--max-steps "$MAX_STEPS")
else  # the cosine schedule ends when the budget is used, at whatever rate the lease reaches (textrec train --time-budget)
    BUDGET=$(( TRAIN_LEFT - STARTUP ))
    [ "$BUDGET" -lt 1 ] && BUDGET=1
    log "time budget: ${BUDGET}s of training from $INIT_FROM with $RECIPE"
    SCHEDULE=(--max-steps 10000000 --time-budget "$BUDGET")
fi
train_run() {  # the same command resumes the run if it saved before stopping (the time budget carries over)
    timeout -s TERM -k 30 "$1" python3 -m cli.main train --config "$RECIPE" --init-from "$INIT_FROM" --scene-device "$SCENE_DEVICE" \
        "${SCHEDULE[@]}" --finish-ahead "$FINISH_AHEAD" "${EXTRA[@]}" --output "$RUN" >> "$OUT/train.log" 2>&1
}
train_run "$TRAIN_LEFT"
STATUS=$?
log "training ended (exit $STATUS)"
# A run that failed (not one stopped by the timeout, 124) gets one more try on the plainest GPU paths, if a minute is
# left: a fault in a path the device check passed must not cost the lease.
LEFT=$(( LEASE_SECONDS - RESERVE - $(elapsed) ))
if [ "$STATUS" -ne 0 ] && [ "$STATUS" -ne 124 ] && [ "$LEFT" -gt 60 ]; then
    for setting in FINISH_AHEAD=0 TEXTREC_TRITON_RNN=0 TEXTREC_CUDA_GRAPHS=0 TEXTREC_FUSED_ADAMW=0; do
        export "$setting"; log "retry fallback: $setting"
    done
    # full-width batches too (a saved run takes the change: --accept-changes)
    EXTRA+=(--width-buckets 0 --width-buckets-from 0 --accept-changes); log "retry fallback: --width-buckets 0"
    if [ -z "${MAX_STEPS:-}" ] && [ ! -f "$RUN/resume.pt" ]; then  # nothing saved: a fresh run, with the time left
        SCHEDULE=(--max-steps 10000000 --time-budget "$(( LEFT - STARTUP ))")
        log "retry time budget: $(( LEFT - STARTUP ))s"
    fi  # (a saved run resumes with its budget; the timeout stops it, state saved, if the restart made it late)
    train_run "$LEFT"
    log "training ended again (exit $?)"
fi

textrec eval --checkpoint "$RUN/last.safetensors" --data data/gpu/real_val --json "$OUT/val_last_36.json" >> "$OUT/lease.log" 2>&1
textrec eval --checkpoint "$RUN/last.safetensors" --data data/gpu/real_val --protocol 62 --json "$OUT/val_last_62.json" >> "$OUT/lease.log" 2>&1
for name in best last; do
    textrec export "$RUN/$name.safetensors" "$OUT/${name}_fp16.safetensors" --half >> "$OUT/lease.log" 2>&1
done
cp "$RUN/metrics.jsonl" "$OUT/"
kill "$SAMPLER" 2>/dev/null
python3 - "$OUT" <<'EOF' 2>&1 | tee -a "$OUT/lease.log"
import json, statistics, sys
out = sys.argv[1]
last36, last62 = (json.load(open(f"{out}/val_last_{p}.json"))[0] for p in ("36", "62"))
steps = [r for r in map(json.loads, open(f"{out}/metrics.jsonl")) if "images_per_second" in r]
median = lambda key: round(statistics.median(r[key] for r in steps if key in r), 4) if any(key in r for r in steps) else None
# data_wait: the share of the training loop's time spent waiting for batches (near 0: the steps set the pace)
print(json.dumps({"val_last_36": last36["accuracy"], "val_last_62": last62["accuracy"], "val_last_ned": last36["ned"],
                  "images_per_second_median": median("images_per_second"), "data_wait_median": median("data_wait"),
                  # the share of full-width work the width buckets' batches did (None: full-width batches)
                  "width_share_median": median("width_share")}))
EOF
log "done"
