#!/usr/bin/env bash
# The H200 run of issue 21 in one device call (< 10 minutes), from a copy of the
# repository (overlay/, benchmarks/, tests/kernels/) with AITER's Triton source in
# aiter_src/ and vLLM's extracted files in .vllm/extracted/; all under $OUT:
#  1. a bounded tune of the H200 set into a copy of the config folder without any
#     H200 file (the cells furthest behind vLLM's GEMMs; winners confirmed A/B);
#  2. the benchmark grid with those files, every peer;
#  3. the grid without them (ours only: the fallback, the nearest tuned device);
#  4. the GPU tests (the GPU test files only: a process that ran the Triton
#     interpreter, as the CPU test modules do on import, cannot compile).
set -u -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:$PWD/aiter_src${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:?}
cfg=/tmp/moe_configs fb=/tmp/moe_configs_fallback
rm -rf "$cfg" "$fb" && cp -r overlay/atom/model_ops/configs/triton_moe "$cfg"
rm -f "$cfg"/*device_name=NVIDIA_H200,*
cp -r "$cfg" "$fb"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/log.txt"
timeout 235 python3 benchmarks/tune_moe.py --config-dir "$cfg" --out "$OUT" \
    --budget-s 200 --cell-budget-s 24 --passes 1 --reps 20 \
    --cells qwen3-30b-a3b:512,qwen3-30b-a3b:1,qwen3-30b-a3b:8,dsv3-tp8:8,dsv3-tp8:512,mixtral:512,mixtral:2048,mixtral-static:512 \
    2>&1 | tee "$OUT/tune.log"
(cd "$cfg" && ls | grep 'device_name=NVIDIA_H200,' | tar -cf "$OUT/h200_configs.tar" -T -)
timeout 130 python3 benchmarks/moe_bench.py --config-dir "$cfg" --out "$OUT" --reps 20 \
    2>&1 | grep -v '^|' | tee -a "$OUT/log.txt"
timeout 60 python3 benchmarks/moe_bench.py --config-dir "$fb" --out "$OUT" --reps 20 \
    --tag _fallback --no-aiter --no-torch --vllm-dir '' 2>&1 | grep -v '^|' | tee -a "$OUT/log.txt"
timeout 120 python3 -m pytest -q -p no:cacheprovider --noconftest -o addopts="" -m gpu \
    tests/kernels/test_triton_moe_gpu.py 2>&1 | tail -40 | tee "$OUT/gpu_tests.log"
