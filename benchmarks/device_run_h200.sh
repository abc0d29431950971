#!/usr/bin/env bash
# The H200 run of issue 21, in two phases (each one device call of < 10 minutes),
# run from a copy of the repository (overlay/, benchmarks/, tests/kernels/) with
# AITER's Triton source in aiter_src/ and vLLM's extracted files in
# .vllm/extracted/; everything goes under $OUT.
#
#   tune     bounded tune of the H200 set (into a copy of the config folder),
#            then the benchmark grid with those files (all peers)
#   fallback the grid without any H200 file (ours only: the fallback), then the
#            GPU tests (pytest -m gpu tests/kernels)
set -u -o pipefail
phase=${1:?tune or fallback}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:$PWD/aiter_src${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:?}
cfg=/tmp/moe_configs
rm -rf "$cfg" && cp -r overlay/atom/model_ops/configs/triton_moe "$cfg"
rm -f "$cfg"/*device_name=NVIDIA_H200,*
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/log.txt"
python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)' | tee -a "$OUT/log.txt"
case $phase in
tune)
    # Mixtral with static scales is new (it starts from the dynamic H100 table);
    # Mixtral is where vLLM led. Bounded: 200 s, 25 s a cell, one pass.
    timeout 240 python3 benchmarks/tune_moe.py --config-dir "$cfg" --out "$OUT" \
        --budget-s 200 --cell-budget-s 25 --passes 1 --reps 10 \
        --cells mixtral-static:8192,mixtral-static:2048,mixtral-static:512,mixtral-static:32,mixtral:2048,mixtral:512,mixtral:8192 \
        --knobs chain2,s2,w2,bn2,s1,w1,block_m 2>&1 | tee -a "$OUT/tune.log"
    tar -C "$cfg" -cf "$OUT/h200_configs.tar" $(cd "$cfg" && ls | grep 'device_name=NVIDIA_H200,' || true)
    timeout 330 python3 benchmarks/moe_bench.py --config-dir "$cfg" --out "$OUT" \
        --reps 20 2>&1 | tee -a "$OUT/log.txt"
    ;;
fallback)
    timeout 200 python3 benchmarks/moe_bench.py --config-dir "$cfg" --out "$OUT" \
        --tag _fallback --reps 20 --no-aiter --no-torch --vllm-dir '' 2>&1 | tee -a "$OUT/log.txt"
    timeout 330 python3 -m pytest -q -p no:cacheprovider --noconftest -o addopts="" \
        -m gpu tests/kernels 2>&1 | tee "$OUT/gpu_tests.log"
    ;;
esac
