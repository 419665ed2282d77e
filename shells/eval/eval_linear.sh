#!/usr/bin/env bash
# Linear probe of a lowered model (the seed's eval/eval_linear, as a call of `poac eval linear`): dinov2's grid of
# 52 linear classifiers on the model's `last4` features, the best on val reported.
# Usage: shells/eval/eval_linear.sh MODEL.onnx [DATA] [ort|tract] [more `poac eval linear` flags]
#   MODEL must be lowered with `--output last4` (shells/extract_elastic.sh RUN W D OUT.onnx --output last4).
#   DATA defaults to the imported Fashion-MNIST; TRAIN_LIMIT / VAL_LIMIT (environment) take class-balanced subsets.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
[ $# -ge 1 ] || { echo "usage: $0 MODEL.onnx [DATA] [ort|tract] [poac eval linear flags]" >&2; exit 2; }
model="$1"; data="${2:-${POAC_CACHE:-$HOME/.cache/poac}/datasets/fashion-mnist}"; runtime="${3:-ort}"
shift $(( $# < 3 ? $# : 3 ))
limits=()
[ -n "${TRAIN_LIMIT:-}" ] && limits+=(--train-limit "$TRAIN_LIMIT")
[ -n "${VAL_LIMIT:-}" ] && limits+=(--val-limit "$VAL_LIMIT")
exec "$REPO/target/release/poac" eval linear --model "$model" --data "$data" --runtime "$runtime" "${limits[@]}" "$@"
