#!/usr/bin/env bash
# Lower one sub-network of a pre-trained run to ONNX (the seed's extract_elastic, as a call of `poac lower`).
# Usage: shells/extract_elastic.sh RUN WIDTH DEPTH OUT.onnx [more `poac lower` flags]
#   WIDTH is a fraction of the largest width (0.5) or an embed dim (128); DEPTH a number of blocks.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ $# -ge 4 ] || { echo "usage: $0 RUN WIDTH DEPTH OUT.onnx [poac lower flags]" >&2; exit 2; }
run="$1"; width="$2"; depth="$3"; out="$4"; shift 4
exec "$REPO/target/release/poac" lower "$run" --width "$width" --depth "$depth" -o "$out" "$@"
