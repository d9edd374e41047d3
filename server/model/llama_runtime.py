"""The llama.cpp runtime under llama-cpp-python: which CPU code it runs, and loading it.

scripts/install_llama_cpp.sh builds llama.cpp with one CPU backend per x86 feature level
(`libggml-cpu-<variant>.so` beside libggml in `llama_cpp/lib`; GGML_BACKEND_DL). Nothing is
loaded until `load_cpu_backend()` asks ggml to pick: each variant's `ggml_backend_score()`
says whether this CPU can run it (0: no) and how well, and the best one is loaded. The AMX
variant is never built (it crashes on Q4_K weights, llama.cpp issue 20824), so no CPU reaches
that code path.

    load_cpu_backend()          # once per process, before the first `llama_cpp.Llama`
    describe()                  # what `make setup` prints: variants, scores, the chosen one

`VOXGATE_LLAMA_CPU_VARIANT=<name>` loads that variant instead of the best (e.g. `haswell`, the
AVX2 one, to rule out a wider code path); one the CPU cannot run is refused with the list.

A build without dynamic backends (an older install) has its CPU code linked in: nothing is
loaded, `describe()` says so, and `scripts/install_llama_cpp.sh` rebuilds it.

Run as `python -m server.model.llama_runtime` to print `describe()`.
"""

from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from server.errors import BackendUnavailable

VARIANT_ENV: Final = "VOXGATE_LLAMA_CPU_VARIANT"
_PREFIX: Final = "libggml-cpu-"
REBUILD_HINT: Final = "rebuild it: bash scripts/install_llama_cpp.sh .venv (or `make setup` after rm .venv/.voxgate-llama-build)"

_loaded: str | None = None  # the variant this process loaded


@dataclass(frozen=True, slots=True)
class CpuVariant:
    name: str
    path: Path
    score: int  # ggml_backend_score(): 0 when this CPU cannot run it; higher is wider

    @property
    def runs_here(self) -> bool:
        return self.score > 0


def library_dir() -> Path:
    """llama_cpp/lib of the installed llama-cpp-python (BackendUnavailable if not installed)."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise BackendUnavailable(f"llama-cpp-python is not installed ({exc}); {REBUILD_HINT}") from exc
    return Path(llama_cpp.__file__).resolve().parent / "lib"


def cpu_variants(lib_dir: Path | None = None) -> list[CpuVariant]:
    """The CPU backends the build holds, each scored for this CPU, widest first. Scoring opens
    each library without initialising it (what ggml itself does to choose)."""
    lib_dir = lib_dir or library_dir()
    found = []
    for path in sorted(lib_dir.glob(f"{_PREFIX}*.so")):
        name = path.name.removeprefix(_PREFIX).removesuffix(".so")
        found.append(CpuVariant(name, path, _score(path)))
    return sorted(found, key=lambda v: v.score, reverse=True)


def _score(path: Path) -> int:
    library: Any = ctypes.CDLL(str(path))
    score_fn = library.ggml_backend_score
    score_fn.restype = ctypes.c_int
    return int(score_fn())


def choose(variants: list[CpuVariant], wanted: str | None) -> CpuVariant:
    """The variant to load: `wanted` by name if given (refused if this CPU cannot run it),
    else the best-scoring one. BackendUnavailable, naming the fix, when none can run."""
    names = ", ".join(f"{v.name} ({'ok' if v.runs_here else 'not on this CPU'})" for v in variants)
    if wanted:
        for variant in variants:
            if variant.name == wanted:
                if not variant.runs_here:
                    raise BackendUnavailable(
                        f"{VARIANT_ENV}={wanted}: this CPU cannot run it; variants: {names}"
                    )
                return variant
        raise BackendUnavailable(f"{VARIANT_ENV}={wanted}: no such variant in this build; variants: {names}")
    runnable = [v for v in variants if v.runs_here]
    if not runnable:
        raise BackendUnavailable(
            f"no CPU backend of this llama.cpp build runs on this CPU (it needs AVX2); variants: {names}"
        )
    return runnable[0]


def load_cpu_backend() -> str:
    """Load the CPU backend once per process and return its variant name ("linked" for a build
    without dynamic backends). Call before creating a `llama_cpp.Llama`."""
    global _loaded
    if _loaded is not None:
        return _loaded
    lib_dir = library_dir()
    variants = cpu_variants(lib_dir)
    if not variants:
        _loaded = "linked"
        return _loaded
    variant = choose(variants, os.environ.get(VARIANT_ENV) or None)
    load = _ggml_library(lib_dir).ggml_backend_load
    load.argtypes = [ctypes.c_char_p]
    load.restype = ctypes.c_void_p
    if not load(str(variant.path).encode()):
        raise BackendUnavailable(f"llama.cpp could not load its CPU backend {variant.path}; {REBUILD_HINT}")
    _loaded = variant.name
    return _loaded


def _ggml_library(lib_dir: Path) -> Any:
    """The libggml that libllama links to. A wheel cannot hold symlinks, so `libggml.so`,
    `libggml.so.0` and `libggml.so.0.x.y` are three copies, each with its own backend registry:
    a backend must be registered in the one libllama loads, by its soname (`libggml.so.0`)."""
    sonames = sorted(lib_dir.glob("libggml.so.*"), key=lambda path: len(path.name))
    return ctypes.CDLL(str(sonames[0] if sonames else lib_dir / "libggml.so"))


def system_info() -> str:
    """llama.cpp's own line of the CPU features its loaded backend uses."""
    import llama_cpp

    return bytes(llama_cpp.llama_print_system_info()).decode(errors="replace").strip()


def describe() -> str:
    """Lines for a person: the build's variants scored for this CPU, the one loaded, and the
    features llama.cpp reports using."""
    variants = cpu_variants()
    lines = []
    if not variants:
        lines.append(f"llama.cpp: CPU code linked in (a build for one CPU, not portable); {REBUILD_HINT}")
    else:
        listed = ", ".join(f"{v.name}{'' if v.runs_here else ' (not on this CPU)'}" for v in variants)
        lines.append(f"llama.cpp CPU variants built: {listed}")
        lines.append(f"llama.cpp CPU variant loaded here: {load_cpu_backend()}")
    lines.append(f"llama.cpp features in use: {system_info()}")
    return "\n".join(lines)


if __name__ == "__main__":
    try:
        print(describe())
    except BackendUnavailable as exc:
        print(f"llama.cpp runtime unusable: {exc}", file=sys.stderr)
        sys.exit(1)
