#!/usr/bin/env bash
# The main job: set up, import Fashion-MNIST, pre-train the small elastic ViT with POA for a bounded time, lower
# three sub-networks (smallest, middle, intact) to ONNX, evaluate each with k-NN on ONNX Runtime and on tract,
# and print one table next to the same sub-networks with random (untrained) weights; `poac report` then writes
# RUN/report/report.md with the loss curves and accuracy-against-cost plots.
#
# Every setting is an environment variable with a default that works on the embedded data:
#   CONFIG=configs/fashion_mnist_vit.yaml  DATA=~/.cache/poac/datasets/fashion-mnist  RUN=runs/fashion_mnist
#   TIME_BUDGET=15m  TRAIN_LIMIT=10000  VAL_LIMIT=2000
# Extra arguments go to `poac pretrain` (e.g. --max-iters 50). A second call resumes/reuses what is done.
# Data-parallel pre-training (as the reference's nodes × GPUs): NNODES=1 NPROC_PER_NODE=1 NODE_RANK=0
#   MASTER_ADDR=127.0.0.1 MASTER_PORT=29500; with more than one process in all, `poac launch` starts this node's
#   workers (run the script on every node with its NODE_RANK; RUN must be a shared folder). The defaults are one
#   process, as before.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
CACHE="${POAC_CACHE:-$HOME/.cache/poac}"
CONFIG="${CONFIG:-configs/fashion_mnist_vit.yaml}"
DATA="${DATA:-$CACHE/datasets/fashion-mnist}"
RUN="${RUN:-runs/fashion_mnist}"
TIME_BUDGET="${TIME_BUDGET:-15m}"
TRAIN_LIMIT="${TRAIN_LIMIT:-10000}"
VAL_LIMIT="${VAL_LIMIT:-2000}"
NNODES="${NNODES:-1}"
NPROC_PER_NODE="${NPROC_PER_NODE:-1}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"
started=$(date +%s)

bash shells/setup.sh
cargo build --release --quiet
POAC="$REPO/target/release/poac"
PY="$CACHE/venv/bin/python"

"$POAC" data fashion-mnist --out "$DATA"

# --resume continues an earlier (interrupted or finished) run of the same folder, or starts a new one.
PRETRAIN=(pretrain --config "$CONFIG" --data "$DATA" --output "$RUN" --time-budget "$TIME_BUDGET" --resume "$@")
if [ $((NNODES * NPROC_PER_NODE)) -gt 1 ]; then
  "$POAC" launch --nnodes "$NNODES" --nproc-per-node "$NPROC_PER_NODE" --node-rank "$NODE_RANK" \
    --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" -- "${PRETRAIN[@]}"
  # Only node 0 lowers and evaluates (it holds rank 0's checkpoint).
  [ "$NODE_RANK" = 0 ] || exit 0
else
  "$POAC" "${PRETRAIN[@]}"
fi
# Baseline: the same sub-networks with random weights — the very initialisation the run started from (same
# config and seed, zero iterations).
RANDOM_RUN="$RUN-random-init"
"$POAC" pretrain --config "$CONFIG" --data "$DATA" --output "$RANDOM_RUN" --max-iters 0 --resume

# Smallest, middle and intact sub-networks of the elastic space.
read -r -a SUBNETS < <("$POAC" inspect "$RUN" --json | "$PY" -c '
import json, sys
rows = json.load(sys.stdin)
widths = sorted({r["width"] for r in rows}); depths = sorted({r["depth"] for r in rows})
picks = [(widths[0], depths[0]), (widths[len(widths) // 2], depths[len(depths) // 2]), (widths[-1], depths[-1])]
print(" ".join(f"{w}:{d}" for w, d in picks))')

RESULTS="$RUN/knn_results.jsonl"
: > "$RESULTS"
for subnet in "${SUBNETS[@]}"; do
  width="${subnet%%:*}"; depth="${subnet##*:}"
  for weights in pretrained random; do
    run="$RUN"; [ "$weights" = random ] && run="$RANDOM_RUN"
    model="$RUN/models/${weights}_w${width}_d${depth}.onnx"
    bash shells/extract_elastic.sh "$run" "$width" "$depth" "$model"
    for runtime in ort tract; do
      json=$(TRAIN_LIMIT="$TRAIN_LIMIT" VAL_LIMIT="$VAL_LIMIT" bash shells/eval/eval_knn.sh "$model" "$DATA" "$runtime" --json --record "$RUN/evals.jsonl")
      "$PY" -c 'import json, sys; r = json.loads(sys.argv[1]); r.update(weights=sys.argv[2], width=int(sys.argv[3]), depth=int(sys.argv[4])); print(json.dumps(r))' \
        "$json" "$weights" "$width" "$depth" >> "$RESULTS"
    done
  done
done

"$POAC" inspect "$RUN" --json > "$RUN/space.json"
"$PY" - "$RESULTS" "$RUN/space.json" "$RUN/metrics.jsonl" "$started" <<'PYEOF'
import json, sys, time
results = [json.loads(l) for l in open(sys.argv[1])]
space = {(r["width"], r["depth"]): r for r in json.load(open(sys.argv[2]))}
metrics = [m for m in map(json.loads, open(sys.argv[3])) if "loss" in m]
acc = {(r["weights"], r["width"], r["depth"], r["runtime"]): r["top1"]["20"] for r in results}
print()
print("POA on Fashion-MNIST — k-NN top-1 (k = 20, %d train / %d val images)" % (results[0]["train_images"], results[0]["val_images"]))
print("| sub-network | params (M) | GFLOPs | pretrained ort | pretrained tract | random ort | random tract | gain (pts) |")
print("|---|---|---|---|---|---|---|---|")
for (w, d) in sorted({(r["width"], r["depth"]) for r in results}):
    s = space[(w, d)]
    p_ort, p_tract = acc[("pretrained", w, d, "ort")], acc[("pretrained", w, d, "tract")]
    r_ort, r_tract = acc[("random", w, d, "ort")], acc[("random", w, d, "tract")]
    print(f"| w{w}-d{d} | {s['params'] / 1e6:.2f} | {s['flops'] / 1e9:.3f} | {100 * p_ort:.2f} | {100 * p_tract:.2f} | "
          f"{100 * r_ort:.2f} | {100 * r_tract:.2f} | {100 * (p_ort - r_ort):+.2f} |")
print("random: the same sub-networks at the run's random initialisation (0 iterations); ort and tract run the same ONNX file")
rates = [m["images_per_second"] for m in metrics if m["images_per_second"] > 0]
print()
print(f"pretraining: {len(metrics)} iterations, {rates[-1]:.1f} img/s (mean over the last invocation), "
      f"{metrics[-1]['elapsed_s'] / 60:.1f} min of training; main job wall time {(time.time() - float(sys.argv[4])) / 60:.1f} min")
PYEOF
# Markdown summary and plots of the run and every recorded evaluation (RUN/report/).
"$POAC" report "$RUN" | sed -n 1p
