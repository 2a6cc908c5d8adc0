#!/usr/bin/env bash
# GPU benchmark, one prepared run (~11 minutes from cold on one H100/H200 with a CUDA build of torch installed):
# tokens/s, MFU and peak memory of `warmstart train` (single process, train.compile=true, bf16) against the HF
# Trainer (bf16, torch_compile) on ~400M and ~1B LLaMA-style models, seq 2048. Nothing is downloaded.
# Writes $OUT/gpu.json when OUT is set (else bench/results/gpu.json); each side has its own time limit and the
# file is rewritten after every side, so a run cut short keeps what finished.
#
#   bash bench/gpu.sh                 # both models
#   bash bench/gpu.sh --models 400m   # extra flags go to bench/gpu_train.py
set -euo pipefail
cd "$(dirname "$0")/.."
out_dir="${OUT:-bench/results}"
mkdir -p "$out_dir"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
py="${PYTHON:-python}"
"$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible to torch')"
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv,noheader || true
timeout 480 "$py" bench/gpu_train.py --out "$out_dir/gpu.json" "$@"
echo "results: $out_dir/gpu.json"
# data.packing: documents vs stream, same model and data (~3 minutes): tokens/s ratio in packing_gpu.json
timeout 300 "$py" bench/packing_throughput.py --device cuda --preset llama-400m --seq-len 2048 --batch-tokens 16384 \
  --micro 8 --steps 12 --skip 4 --repeats 2 --compile --out "$out_dir/packing_gpu.json" || echo "packing: failed or cut short"
echo "results: $out_dir/packing_gpu.json"
