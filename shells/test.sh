#!/usr/bin/env bash
# The test command: set up (idempotent; installs libtorch, ONNX Runtime, the onnx checker and the dataset into
# ~/.cache/poac), then build and run every test of the workspace in release mode. Extra arguments go to cargo test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash shells/setup.sh
cargo test --release --workspace "$@"
