#!/usr/bin/env bash
# Install the pinned llama-cpp-python into a virtualenv, unless it already imports there.
#
# Usage: scripts/install_llama_cpp.sh [VENV]        (VENV defaults to .venv)
#
# PyPI has no prebuilt wheel, so pip compiles llama.cpp for the CPU it runs on: 5-9 minutes on
# 2 cores. Repeated `make` runs must not pay that again, hence the import check first; pip also
# keeps the built wheel in its cache, so a fresh venv on the same machine installs in seconds.
# Extra CMake flags pass through CMAKE_ARGS (e.g. CMAKE_ARGS="-DGGML_NATIVE=OFF" for a portable
# build).
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION="0.3.36"
venv="${1:-.venv}"
python="$venv/bin/python"

if [[ ! -x "$python" ]]; then
    echo "install_llama_cpp: no python at $python (create the venv first)" >&2
    exit 2
fi

if "$python" - "$LLAMA_CPP_PYTHON_VERSION" <<'PY' 2>/dev/null; then
import sys
import llama_cpp
sys.exit(0 if llama_cpp.__version__ == sys.argv[1] else 1)
PY
    echo "llama-cpp-python $LLAMA_CPP_PYTHON_VERSION already installed in $venv"
    exit 0
fi

echo "building llama-cpp-python $LLAMA_CPP_PYTHON_VERSION from source into $venv (5-9 min on 2 cores)"
CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
    "$python" -m pip install "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
"$python" -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__, 'installed')"
