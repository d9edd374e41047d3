#!/usr/bin/env bash
# Create the virtual environment and install Voxgate with its test tools. Idempotent.
set -euo pipefail
python=${1:-python3}
venv=${2:-.venv}
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e ".[dev]"
# silero-vad's wheel bundles the ONNX model we use; its declared torch dependency is only
# needed for its own Python wrapper, which we do not import.
"$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps "silero-vad==6.2.3"
# The embedded language model's runtime: compiled from source once, then kept in the venv.
bash "$(dirname "$0")/install_llama_cpp.sh" "$venv"
