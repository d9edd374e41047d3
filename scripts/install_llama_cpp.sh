#!/usr/bin/env bash
# Install the pinned llama-cpp-python, built portably, into a virtualenv.
#
# Usage: scripts/install_llama_cpp.sh [VENV]        (VENV defaults to .venv)
#
# What it builds: llama.cpp with its CPU backend compiled once per x86 feature level
# (GGML_BACKEND_DL + GGML_CPU_ALL_VARIANTS, GGML_NATIVE=OFF). At load time ggml picks the best
# variant the running CPU supports, so one build runs on any x86-64 CPU with AVX2 and uses
# AVX-512/VNNI/BF16 where they exist. AMX (the `sapphirerapids` variant) is never built: its
# matmul path segfaults on Q4_K weights (llama.cpp issue 20824). scripts/patch_llama_cpp.py edits
# the variant list; LLAMA_CPU_VARIANTS overrides it (e.g. "haswell" alone for a quick build).
#
# Deterministic: pip's wheel cache keys a source build by name and version only, not CMAKE_ARGS
# or CPU, so it is bypassed (--no-cache-dir). The wheel this script builds is kept in
# ~/.cache/voxgate/llama-wheels/<build key>/, and the venv records the key it was installed with
# in .voxgate-llama-build. A venv with another key (an older native build, other variants) is
# rebuilt; one with this key is left alone. The wheel is portable, so reusing it on another CPU
# is safe, which is what the key promises.
#
# PyPI has no prebuilt wheel: the first build takes about 10 minutes on 2 cores.
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION="0.3.36"
# AVX2 (haswell), AVX-512 (skylakex), +VNNI (cascadelake), +VBMI (icelake), +BF16 (zen4: also
# what Sapphire Rapids and newer Xeons run, without AMX), AVX-VNNI without AVX-512 (alderlake)
LLAMA_CPU_VARIANTS="${LLAMA_CPU_VARIANTS:-haswell skylakex cascadelake icelake zen4 alderlake}"
# bump when the way this script builds changes, so venvs built the old way are rebuilt
BUILD_RECIPE=2

venv="${1:-.venv}"
python="$venv/bin/python"
here="$(cd "$(dirname "$0")" && pwd)"
if [[ ! -x "$python" ]]; then
    echo "install_llama_cpp: no python at $python (create the venv first)" >&2
    exit 2
fi

# LLAVA_BUILD=OFF: the multimodal library (libmtmd) is never loaded by Voxgate; it costs minutes
cmake_args="-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON -DLLAVA_BUILD=OFF ${VOXGATE_LLAMA_CMAKE_ARGS:-}"
key_text="llama-cpp-python=$LLAMA_CPP_PYTHON_VERSION recipe=$BUILD_RECIPE variants=$LLAMA_CPU_VARIANTS cmake=$cmake_args patch=$(sha256sum "$here/patch_llama_cpp.py" | cut -c1-16)"
key="$LLAMA_CPP_PYTHON_VERSION-$(printf '%s' "$key_text" | sha256sum | cut -c1-16)"
stamp="$venv/.voxgate-llama-build"

report() {
    "$python" -m server.model.llama_runtime
}

if [[ -f "$stamp" && "$(cat "$stamp")" == "$key" ]] && "$python" -c "import llama_cpp" 2>/dev/null; then
    echo "llama-cpp-python $LLAMA_CPP_PYTHON_VERSION already installed in $venv (build $key)"
    report
    exit 0
fi

cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/voxgate/llama-wheels"
wheel_dir="$cache_root/$key"
wheel=$(ls "$wheel_dir"/llama_cpp_python-*.whl 2>/dev/null | head -n 1 || true)
if [[ -z "$wheel" ]]; then
    echo "building llama-cpp-python $LLAMA_CPP_PYTHON_VERSION (CPU variants: $LLAMA_CPU_VARIANTS; about 10 min on 2 cores)"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    "$python" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
        -d "$work" "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
    tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
    src=$(ls -d "$work"/llama_cpp_python-*/)
    # shellcheck disable=SC2086
    "$python" "$here/patch_llama_cpp.py" "$src" $LLAMA_CPU_VARIANTS
    mkdir -p "$work/wheel"
    CMAKE_ARGS="$cmake_args" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
        "$python" -m pip wheel -q --disable-pip-version-check --no-cache-dir --no-deps -w "$work/wheel" "$src"
    mkdir -p "$wheel_dir"
    cp "$work"/wheel/llama_cpp_python-*.whl "$wheel_dir/"
    printf '%s\n' "$key_text" >"$wheel_dir/BUILD"
    wheel=$(ls "$wheel_dir"/llama_cpp_python-*.whl | head -n 1)
else
    echo "installing llama-cpp-python from $wheel (built earlier with the same key)"
fi

rm -f "$stamp"
"$python" -m pip uninstall -q -y llama-cpp-python >/dev/null 2>&1 || true
"$python" -m pip install -q --disable-pip-version-check --no-cache-dir "$wheel"
printf '%s\n' "$key" >"$stamp"
report
