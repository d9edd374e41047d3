"""llama-cpp-python's own OpenAI-compatible server, with the embedded backend's runtime setup.

    python -m loadtests.llama_server --model <gguf> --n_threads 2 --n_ctx 2048 --port 8000

Runs `llama_cpp.server`'s `main()` unchanged (every argument is its own) after the three
things `server.model.backends.gemma_llm.load_engine` does before it builds its `Llama`, so the
remote model runs the same code as the embedded one:

- the llama.cpp CPU backend is loaded (`server.model.llama_runtime.load_cpu_backend`): this
  build has its CPU code in per-variant libraries (GGML_BACKEND_DL), and plain
  `python -m llama_cpp.server` loads none, so llama.cpp finds no device and fails with
  "Failed to load model from file";
- `GOMP_SPINCOUNT` gets the embedded backend's short spin (unless OMP_WAIT_POLICY or
  GOMP_SPINCOUNT is set);
- `Llama` is built with `swa_full=True`, which the server's settings cannot set: Gemma 3's
  sliding-window KV cache refuses partial removal otherwise, so llama.cpp's prefix reuse
  fails and every request evaluates its whole prompt again.

Needs the `dev` extra's `sse-starlette` and `starlette-context` (llama_cpp.server's imports).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from server.model.backends.gemma_llm import OMP_SPIN_COUNT


def main() -> None:
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = str(OMP_SPIN_COUNT)
    from server.model.llama_runtime import load_cpu_backend

    load_cpu_backend()
    import llama_cpp
    from llama_cpp.server.__main__ import main as serve

    class FullSwaLlama(llama_cpp.Llama):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("swa_full", True)
            super().__init__(*args, **kwargs)

    llama_cpp.Llama = FullSwaLlama  # type: ignore[misc]  # llama_cpp.server builds llama_cpp.Llama
    sys.argv[0] = "llama_cpp.server"
    serve()  # type: ignore[no-untyped-call]  # llama_cpp.server is untyped


if __name__ == "__main__":
    main()
