#!/usr/bin/env bash
# Fine-tuning of one sub-network of a pre-trained run (the seed's eval/eval_finetuning, as a call of
# `poac eval finetune`): DeiT's recipe with a classifier head, the best weights lowered to ONNX with the head and
# checked on ONNX Runtime and tract.
# Usage: shells/eval/eval_finetuning.sh RUN [SIZE | WIDTH DEPTH] [DATA] [more `poac eval finetune` flags]
#   SIZE is small, base or large (default: the intact network); WIDTH a fraction (0.5) or embed dim (128).
#   DATA defaults to the imported Fashion-MNIST. Environment: EPOCHS (default: the config's), TRAIN_LIMIT / VAL_LIMIT
#   (class-balanced subsets, default 10000 / 2000), OUTPUT (default RUN/finetune/wW-dD), RECORD (the file the
#   JSON result is appended to, default RUN/evals.jsonl, which `poac report RUN` reads; empty: none).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
[ $# -ge 1 ] || { echo "usage: $0 RUN [SIZE | WIDTH DEPTH] [DATA] [poac eval finetune flags]" >&2; exit 2; }
run="$1"; shift
subnet=()
case "${1:-}" in
  small|base|large) subnet=(--size "$1"); shift ;;
  [0-9]*) [ $# -ge 2 ] || { echo "$0: WIDTH $1 needs a DEPTH after it" >&2; exit 2; }
          subnet=(--width "$1" --depth "$2"); shift 2 ;;
esac
data="${POAC_CACHE:-$HOME/.cache/poac}/datasets/fashion-mnist"
if [ $# -ge 1 ] && [ "${1#-}" = "$1" ]; then data="$1"; shift; fi
flags=(--train-limit "${TRAIN_LIMIT:-10000}" --val-limit "${VAL_LIMIT:-2000}")
[ -n "${EPOCHS:-}" ] && flags+=(--epochs "$EPOCHS")
[ -n "${OUTPUT:-}" ] && flags+=(--output "$OUTPUT")
record="${RECORD-$run/evals.jsonl}"
[ -n "$record" ] && flags+=(--record "$record")
exec "$REPO/target/release/poac" eval finetune "$run" "${subnet[@]}" --data "$data" "${flags[@]}" "$@"
