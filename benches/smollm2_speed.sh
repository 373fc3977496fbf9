#!/usr/bin/env bash
# The SmolLM2 teacher's forward speed, burn (flex, float32) and Hugging Face transformers
# (float32), side by side in one run on this machine: batch 4 x 256 and 1 x 1024, median of
# --repeats, alternating the two twice so that a change in the machine's load shows.
#   benches/smollm2_speed.sh GGUF [PYTHON]    (PYTHON: a venv with torch, transformers, gguf)
set -euo pipefail
cd "$(dirname "$0")/.."
GGUF=${1:?usage: benches/smollm2_speed.sh GGUF [PYTHON]}
PYTHON=${2:-python3}
THREADS=$(nproc)
cargo build --release --example smollm2 -q
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $THREADS threads"
for round in 1 2; do
  echo "-- round $round"
  RAYON_NUM_THREADS=$THREADS target/release/examples/smollm2 speed --gguf "$GGUF" 2>/dev/null
  "$PYTHON" benches/pytorch/smollm2.py speed --gguf "$GGUF" --threads "$THREADS" 2>/dev/null | grep tokens
done
