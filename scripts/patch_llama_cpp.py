"""Patch an unpacked llama-cpp-python sdist to build the CPU variants Voxgate chooses.

Usage: python scripts/patch_llama_cpp.py SDIST_DIR VARIANT [VARIANT ...]

llama.cpp's GGML_CPU_ALL_VARIANTS builds one CPU backend per x86 feature level and picks the best
one the running CPU supports when the library loads (GGML_BACKEND_DL). Two things in that list do
not suit us, so this script edits it before the build:

- the `sapphirerapids` variant turns on AMX, whose matmul path segfaults on Q4_K weights on the
  very CPUs that have it (llama.cpp issue 20824): it is never built;
- variants below AVX2 (x64, sse42, sandybridge, ivybridge, piledriver) are Voxgate's floor anyway
  and each costs a minute of compiling on 2 cores: they are not built either.

llama-cpp-python installs only the backends it names (`ggml-cpu`, not `ggml-cpu-haswell`), so the
chosen variants are added to its install list, beside libggml in `llama_cpp/lib`.

Fails loudly, naming the anchor, if the sources are not the shape this script was written for.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

NEVER = {"sapphirerapids"}  # AMX: the crash this build exists to avoid


def patch_variant_list(cmake_file: Path, wanted: list[str]) -> None:
    text = cmake_file.read_text()
    anchor = "if (GGML_CPU_ALL_VARIANTS)"
    start = text.find(anchor)
    if start < 0:
        raise SystemExit(f"patch_llama_cpp: {cmake_file}: no '{anchor}' block")
    end = text.find('elseif(GGML_SYSTEM_ARCH STREQUAL "ARM")', start)
    if end < 0:
        raise SystemExit(f"patch_llama_cpp: {cmake_file}: the x86 variant list has no end")
    block = text[start:end]
    present = re.findall(r"ggml_add_cpu_backend_variant\((\w+)", block)
    missing = [v for v in wanted if v not in present]
    if missing:
        raise SystemExit(f"patch_llama_cpp: variants {missing} are not in this llama.cpp (it has {present})")

    def keep(match: re.Match[str]) -> str:
        return match.group(0) if match.group(1) in wanted else ""

    patched = re.sub(r"[ \t]*ggml_add_cpu_backend_variant\((\w+)[^)]*\)[ \t]*\n", keep, block)
    left = re.findall(r"ggml_add_cpu_backend_variant\((\w+)", patched)
    assert sorted(left) == sorted(wanted), (left, wanted)
    cmake_file.write_text(text[:start] + patched + text[end:])


def patch_install_list(cmake_file: Path, wanted: list[str]) -> None:
    text = cmake_file.read_text()
    anchor = "llama_cpp_python_install_target(ggml-cpu)\n"
    if anchor not in text:
        raise SystemExit(f"patch_llama_cpp: {cmake_file}: no '{anchor.strip()}' line")
    extra = "".join(f"    llama_cpp_python_install_target(ggml-cpu-{v})\n" for v in wanted)
    cmake_file.write_text(text.replace(anchor, anchor + extra, 1))


def main(argv: list[str]) -> None:
    if len(argv) < 3:
        raise SystemExit(__doc__)
    sdist = Path(argv[1])
    wanted = argv[2:]
    refused = NEVER.intersection(wanted)
    if refused:
        raise SystemExit(f"patch_llama_cpp: {sorted(refused)} is never built (AMX crashes on Q4_K weights)")
    patch_variant_list(sdist / "vendor/llama.cpp/ggml/src/CMakeLists.txt", wanted)
    patch_install_list(sdist / "CMakeLists.txt", wanted)
    print(f"patch_llama_cpp: CPU variants {' '.join(wanted)}")


if __name__ == "__main__":
    main(sys.argv)
