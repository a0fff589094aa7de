#!/usr/bin/env bash
# Claim 1 of seed 004 ("EHRXDiff uses the events") over three training seeds, on one GPU, in
# one go (RESULTS.md, "Claim 1 over more training seeds (2026-11-29, evening)"):
#
#   1. bench/bench_ehrxdiff.py on the GPU alone: the paper-size model's training step at the
#      paper's batch of 128 and its DDIM sampling (BENCHMARKS.md);
#   2. six ehrxdiff_small runs side by side, each with its own autoencoder and CLIP (the
#      project's default: trained once per data and seed) on the phantom whose findings are
#      the change (spontaneous_change=0 texture_change=0 acquisition_jitter=0):
#        drv<seed>: the phantom's driver events only, the model's 15 epochs;
#        pap<seed>: the paper's event selection, up to EPOCHS_PAPER epochs, capped by time;
#   3. as soon as a run has its checkpoint, it is evaluated again with another patient's
#      events (<tag>_swap) and, for drv, with 99 % of its events dropped (<tag>_drop), on the
#      same sampling seeds;
#   4. the run folders' results (no checkpoints) packed into $OUT, in parts of 15 MB, for
#      results/ehrxdiff_small/paired_forecasts.py.
#
# Run from the repository root on a machine with one GPU: OUT=/tmp/claim1 bash results/ehrxdiff_small/claim1_gpu.sh
#
# Every stage runs under `timeout`, so the script ends within BUDGET seconds and what finished
# comes back. On one H200 (2026-11-29) the six runs side by side took about 30 s an epoch each
# (the small model leaves the GPU mostly idle: BENCHMARKS.md), so the default budget of
# 40 minutes should give the driver runs their 15 epochs and the paper-selection runs about 55
# (projected, not yet run); a 9-minute budget was too short (the driver runs reached epoch 9,
# nothing was evaluated).
# Settings (environment): OUT, LOGS (the runs' console logs; packed too), BUDGET (s),
# SEEDS, EPOCHS_PAPER, TRAINER, BENCH=0 to skip the benchmark, EXTRA (overrides for every run,
# e.g. a smoke test's +trainer.limit_train_batches=2), THREADS (torch threads per run).
set -u
OUT=${OUT:-/tmp/claim1_gpu}
LOGS=${LOGS:-$OUT/logs}
BUDGET=${BUDGET:-2400}
SEEDS=${SEEDS:-"0 1 2"}
EPOCHS_PAPER=${EPOCHS_PAPER:-60}
TRAINER=${TRAINER:-gpu}
BENCH=${BENCH:-1}
EXTRA=${EXTRA:-}
export OMP_NUM_THREADS=${THREADS:-2} WANDB_MODE=disabled HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$LOGS"
start=$SECONDS
until_() { echo $(( $1 - (SECONDS - start) )); }   # seconds left until second $1 of the budget
stamp() { echo "[$(( SECONDS - start )) s] $*" | tee -a "$LOGS/timeline.txt"; }

PHANTOM="data=synthetic_cxr data.source.spontaneous_change=0 data.source.texture_change=0
  data.source.acquisition_jitter=0"
DRIVERS="data/event_selection=phantom_drivers task.min_events=0"
run() {  # run <tag> <seconds> <overrides...>
  local tag=$1 seconds=$2; shift 2
  stamp "$tag: start ($seconds s at most)"
  # shellcheck disable=SC2086
  EHRLAB_RUN_ID=$tag timeout --signal=TERM --kill-after=10 "$seconds" python run.py model=ehrxdiff_small \
    task=cxr_forecast $PHANTOM logger=csv trainer=$TRAINER trainer.enable_progress_bar=false split_seed=0 \
    $EXTRA "$@" > "$LOGS/$tag.log" 2>&1
  stamp "$tag: exit $?"
}
run_dir() { ls -d outputs/*/*_"$1" 2>/dev/null | tail -1; }

if [ "$BENCH" = 1 ]; then
  stamp "bench"
  timeout 100 python bench/bench_ehrxdiff.py --device cuda --precision bf16 --skip-small \
    --paper-batch 128 --paper-sample-batch 32 --steps 3 --sample-batches 1 > "$OUT/bench.md" 2>&1
  stamp "bench: exit $?"
fi

# Training (with each run's own sampling and evaluation) ends by 80 % of the budget, the
# evaluations with other events by 96 %. A paper-selection run's diffusion training gets what
# is left minus a minute for its parts and two for its sampling and evaluator.
train_end=$(( BUDGET * 80 / 100 )) eval_end=$(( BUDGET * 96 / 100 ))
paper_seconds=$(( $(until_ $train_end) - 180 )); [ $paper_seconds -lt 60 ] && paper_seconds=60
max_time=$(printf '00:00:%02d:%02d' $(( paper_seconds / 60 )) $(( paper_seconds % 60 )))

chain() {  # chain drv|pap <seed>: train and evaluate, then evaluate with other events
  local kind=$1 seed=$2 tag=$1$2 selection="" dir
  if [ "$kind" = drv ]; then
    selection=$DRIVERS
    # shellcheck disable=SC2086
    run "$tag" "$(until_ $train_end)" $DRIVERS seed=$seed
  else
    run "$tag" "$(until_ $train_end)" seed=$seed epochs=$EPOCHS_PAPER +trainer.max_time=$max_time
  fi
  dir=$(run_dir "$tag")
  if [ -z "$dir" ] || [ ! -f "$dir/checkpoints/best.ckpt" ]; then stamp "$tag: no checkpoint"; return; fi
  # the run's autoencoder and CLIP come back from the cache (same data, part config and seed)
  local config=("seed=$seed" stage=evaluate "ckpt_path=$dir/checkpoints/best.ckpt")
  # shellcheck disable=SC2086
  run "${tag}_swap" "$(until_ $eval_end)" $selection "${config[@]}" cxr_evaluation.swap_events=true &
  if [ "$kind" = drv ]; then
    # shellcheck disable=SC2086
    run "${tag}_drop" "$(until_ $eval_end)" $selection "${config[@]}" cxr_evaluation.drop_events=0.99 &
  fi
  wait
}

stamp "training until ${train_end} s (paper runs: max_time $max_time), evaluations until ${eval_end} s"
for seed in $SEEDS; do
  chain drv "$seed" &
  chain pap "$seed" &
done
wait

stamp "packing"
list=$LOGS/files.txt; : > "$list"
for seed in $SEEDS; do
  for tag in "drv$seed" "pap$seed" "drv${seed}_swap" "pap${seed}_swap" "drv${seed}_drop"; do
    dir=$(run_dir "$tag"); [ -n "$dir" ] || continue
    (cd "$dir" && ls config.yaml metrics.json run.log evaluation/evaluation.json evaluation/report.md \
      forecasts/seed_*.npz csv/metrics.csv csv/*/metrics.csv 2>/dev/null) | sed "s|^|$dir/|" >> "$list"
  done
done
cache=${EHRLAB_CACHE:-$HOME/.cache/ehrlab}
# shellcheck disable=SC2046
tar -czf "$OUT/runs.tgz" -T "$list" "$LOGS" -C "$cache" cxr_evaluators $(cd "$cache" && ls pretrained/*/metrics.json \
  pretrained/*/config.yaml 2>/dev/null) 2>> "$LOGS/timeline.txt"
split -b 15m "$OUT/runs.tgz" "$OUT/runs.tgz.part-" && rm "$OUT/runs.tgz"
python - "$SEEDS" <<'EOF' | tee "$OUT/summary.md"
import glob, json, sys
print("| run | All | Same | Diff | FID |\n|---|---|---|---|---|")
for seed in sys.argv[1].split():
    for tag in (f"drv{seed}", f"drv{seed}_swap", f"drv{seed}_drop", f"pap{seed}", f"pap{seed}_swap"):
        found = sorted(glob.glob(f"outputs/*/*_{tag}/metrics.json"))
        if not found:
            print(f"| {tag} | missing | | | |")
            continue
        m = json.load(open(found[-1]))
        print(f"| {tag} | " + " | ".join(f"{m.get(k, float('nan')):.3f}" for k in
              ("test/auroc_all", "test/auroc_same", "test/auroc_diff", "test/fid")) + " |")
EOF
stamp "done"
cat "$LOGS/timeline.txt" >> "$OUT/summary.md"
