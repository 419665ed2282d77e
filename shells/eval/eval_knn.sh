#!/usr/bin/env bash
# k-NN evaluation of a lowered model (the seed's eval/eval_knn, as a call of `poac eval knn`).
# Usage: shells/eval/eval_knn.sh MODEL.onnx [DATA] [ort|tract] [more `poac eval knn` flags]
#   DATA defaults to the imported Fashion-MNIST; TRAIN_LIMIT / VAL_LIMIT (environment) take class-balanced subsets.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
[ $# -ge 1 ] || { echo "usage: $0 MODEL.onnx [DATA] [ort|tract] [poac eval knn flags]" >&2; exit 2; }
model="$1"; data="${2:-${POAC_CACHE:-$HOME/.cache/poac}/datasets/fashion-mnist}"; runtime="${3:-ort}"
shift $(( $# < 3 ? $# : 3 ))
limits=()
[ -n "${TRAIN_LIMIT:-}" ] && limits+=(--train-limit "$TRAIN_LIMIT")
[ -n "${VAL_LIMIT:-}" ] && limits+=(--val-limit "$VAL_LIMIT")
exec "$REPO/target/release/poac" eval knn --model "$model" --data "$data" --runtime "$runtime" "${limits[@]}" "$@"
