#!/usr/bin/env bash
# The kernel checks and the V3.2-shape benchmark in one GPU run (the lent device's
# time is scarce). Writes logs and JSON under ${OUT:-out/gpu}. Usage, on a CUDA machine
# with torch and Triton: bash scripts/gpu_kernels.sh [pytest -k expression]
set -u
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
unset TRITON_INTERPRET
K=${1:-"gluon or backward or strided or maxima or v32_shape or decode_selection or indexer_logits"}
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
# the device copy has no duckdb: confine conftest discovery to the kernel tests
timeout 170 python -m pytest -q --confcutdir=tests/kernels -p no:cacheprovider \
  tests/kernels/test_gluon_fwd.py tests/kernels/test_sparse_attn.py \
  tests/kernels/test_indexer_logits.py tests/kernels/test_v32_shape.py \
  tests/kernels/test_dsa_model.py -k "$K" > "$OUT/t.log" 2>&1
echo "pytest rc=$?" >> "$OUT/t.log"; tail -3 "$OUT/t.log"
PYTHONPATH=. timeout 280 python benchmarks/dsa_attention.py \
  --skip indexer,topk,decode,prefill,warmup,v32prefill --json "$OUT/a.json" > "$OUT/a.log" 2>&1
echo "bench a rc=$?" >> "$OUT/a.log"
PYTHONPATH=. timeout 130 python benchmarks/dsa_attention.py \
  --skip indexer,topk,decode,prefill,warmup,v32,v32decode --v32-lengths 16384,131072 \
  --json "$OUT/b.json" > "$OUT/b.log" 2>&1
echo "bench b rc=$?" >> "$OUT/b.log"
grep -hE "WRONG|FAIL|Error|bwd|gluon|Gluon|bound|step|selection|TFLOP|rc=" "$OUT/a.log" "$OUT/b.log" | cut -c1-220 | head -80
