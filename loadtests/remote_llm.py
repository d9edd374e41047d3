"""What a remote language model costs a spoken turn: `python -m loadtests.remote_llm --help`.

    python -m loadtests.remote_llm --rounds 4 --limit 6 --out results/remote_llm.json

Starts, on loopback, llama-cpp-python's own OpenAI-compatible server
(`python -m llama_cpp.server` through `loadtests.llama_server`, which first does the embedded
backend's runtime setup) on the Gemma 3 270M GGUF the embedded backend uses, with the same
threads and context, and three `python -m server serve` processes with the fast profile
(Silero, PocketSphinx, eSpeak NG):

- "embedded": `VOXGATE_LLM=gemma`, anticipation as by default (on: the model starts on the
  recogniser's hypothesis when the turn is committed);
- "embedded-noant": the same with `VOXGATE_ANTICIPATE_REPLIES=false`;
- "remote": `VOXGATE_LLM=openai` pointed at the llama.cpp server. The `openai` backend never
  anticipates (server/http/app.py ANTICIPATING_LLMS), whatever the setting.

Then, round after round, speaks the same corpus utterances at real time (loadtests.session,
one session per utterance: the base model served as a chat answers the second turn of a
conversation with nothing) to each configuration in turn, rotating which goes first, and pairs each utterance's figures with the remote one: voice-to-voice (end of speech in
the audio -> first reply audio), the user transcript, and transcript -> first audio (the
language model's first phrase and the voice's first audio for it: where the hop is). Every
session asks for `max_output_tokens` (default 48, the embedded backend's own cap) so the two
models' replies have the same bound. Printed: medians and p90 per configuration, and the median
and p10/p90 of the paired differences (remote - embedded, remote - embedded-noant). The first
round's first utterance warms each configuration up and is not counted. All figures in ms; raw
samples, with the replies' text, go to `--out`.

Only one configuration speaks at a time; the idle servers and the idle llama.cpp server wait
on sockets, so each path has the box's cores to itself while it runs (2 llama.cpp threads in
both). The replies differ: the embedded backend continues a few-shot transcript and cuts the
reply at the end of the agent's line, while the remote model gets a chat (Gemma's chat
template over the `openai` backend's system prompt and the history) and its reply runs to
`max_output_tokens` unless it ends itself. The first phrase (4 words) is what first audio
waits for, in both.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from loadtests.bench_latency import BenchError, all_turns, free_port, plan_turns, run_plans, spawned_server
from loadtests.corpus import DEFAULT_CACHE_DIR, HUMAN_DATA_DIR, CorpusUnavailable, load_corpus
from loadtests.paired import TURN_METRICS, keyed_samples, paired_lines
from loadtests.session import SessionOptions

REPO_ROOT = Path(__file__).resolve().parents[1]
BASE_ENV = {"VOXGATE_PROFILE": "fast", "VOXGATE_LOG_LEVEL": "info"}  # info: the per-turn log lines
CONFIGS = ("embedded", "embedded-noant", "remote")
PAIRS = (("remote", "embedded"), ("remote", "embedded-noant"))
SERVED_MODEL = "gemma-3-270m"
# the server's per-turn log fields reported beside the client's figures
SERVER_FIELDS = ("llm_first_token_ms", "tts_first_audio_ms")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.remote_llm", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--corpus", default="human", help="corpus sources (default %(default)s)")
    parser.add_argument("--limit", type=int, default=6, help="utterances per round (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds (default %(default)s)")
    parser.add_argument(
        "--threads", type=int, default=2, help="llama.cpp threads, both paths (default %(default)s)"
    )
    parser.add_argument(
        "--n-ctx", type=int, default=2048, help="context tokens, both paths (default %(default)s)"
    )
    parser.add_argument(
        "--max-output-tokens",
        type=int,
        default=48,
        help="reply cap asked by every session (default %(default)s)",
    )
    parser.add_argument(
        "--silence-ms", type=int, default=300, help="server VAD silence (default %(default)s)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("results/remote_llm.json"), help="raw samples (JSON)"
    )
    parser.add_argument("--report", type=Path, help="print the report of a saved --out file and exit")
    parser.add_argument("--data-dir", type=Path, default=HUMAN_DATA_DIR, help="pocketsphinx-testdata folder")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="synthetic corpus cache")
    return parser


def llama_server_command(model_path: Path, port: int, threads: int, n_ctx: int) -> list[str]:
    """The llama.cpp server's command line: the embedded backend's threads and context."""
    return [
        sys.executable,
        "-m",
        "loadtests.llama_server",
        "--model",
        str(model_path),
        "--model_alias",
        SERVED_MODEL,
        "--n_threads",
        str(threads),
        "--n_threads_batch",
        str(threads),
        "--n_ctx",
        str(n_ctx),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--verbose",
        "False",
    ]


def server_envs(base_url: str, threads: int, n_ctx: int) -> dict[str, dict[str, str]]:
    """Each configuration's environment for `python -m server serve`."""
    gemma = json.dumps({"gemma": {"n_threads": threads, "n_ctx": n_ctx}})
    remote = json.dumps({"openai": {"base_url": base_url, "model": SERVED_MODEL}})
    return {
        "embedded": {**BASE_ENV, "VOXGATE_LLM": "gemma", "VOXGATE_BACKEND_OPTIONS": gemma},
        "embedded-noant": {
            **BASE_ENV,
            "VOXGATE_LLM": "gemma",
            "VOXGATE_ANTICIPATE_REPLIES": "false",
            "VOXGATE_BACKEND_OPTIONS": gemma,
        },
        "remote": {**BASE_ENV, "VOXGATE_LLM": "openai", "VOXGATE_BACKEND_OPTIONS": remote},
    }


@contextlib.asynccontextmanager
async def llama_server(
    command: Sequence[str], port: int, log_path: Path, startup_timeout_s: float = 120.0
) -> AsyncIterator[str]:
    """Run the llama.cpp server; yields its base URL (".../v1") once /v1/models answers.
    Stopped with SIGTERM (SIGKILL after 10 s) on exit."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            *command,
            cwd=REPO_ROOT,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log_file,
            stderr=asyncio.subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + startup_timeout_s
        async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
            while True:
                if process.returncode is not None:
                    tail = (await asyncio.to_thread(log_path.read_text, errors="replace"))[-2000:]
                    raise BenchError(f"the llama.cpp server exited with status {process.returncode}:\n{tail}")
                if time.monotonic() > deadline:
                    raise BenchError(
                        f"the llama.cpp server did not answer within {startup_timeout_s:g} s; see {log_path}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{base_url}/models")).status_code == 200:
                        break
                await asyncio.sleep(0.2)
        yield base_url
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await asyncio.wait_for(process.wait(), 5)


def round_order(round_index: int) -> tuple[str, ...]:
    """The configurations in the order they speak in this round: rotated each round."""
    shift = round_index % len(CONFIGS)
    return CONFIGS[shift:] + CONFIGS[:shift]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from server.model.backends.gemma_llm import assemble_model, gemma_source, model_cache_dir

    try:
        corpus = load_corpus(
            [s.strip() for s in args.corpus.split(",") if s.strip()],
            data_dir=args.data_dir,
            cache_dir=args.cache_dir,
        )[: args.limit]
    except (CorpusUnavailable, ValueError) as exc:
        raise BenchError(str(exc)) from exc
    model_path = assemble_model(model_cache_dir({}), gemma_source())
    plans = plan_turns(corpus, 1, barge_in_probability=0.0, barge_in_after_ms=0, rng=random.Random(0))
    logs = args.out.parent
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in CONFIGS}
    port = free_port()
    command = llama_server_command(model_path, port, args.threads, args.n_ctx)
    async with contextlib.AsyncExitStack() as stack:
        base_url = await stack.enter_async_context(llama_server(command, port, logs / "remote_llm.llama.log"))
        envs = server_envs(base_url, args.threads, args.n_ctx)
        urls = {}
        for name in CONFIGS:
            url, _ = await stack.enter_async_context(
                spawned_server(envs[name], logs / f"remote_llm.{name}.log")
            )
            urls[name] = url
        for round_index in range(args.rounds):
            for name in round_order(round_index):
                options = SessionOptions(
                    url=urls[name],
                    silence_duration_ms=args.silence_ms,
                    max_output_tokens=args.max_output_tokens,
                )
                sessions = await run_plans(options, plans, session_per_utterance=True)
                for index, turn in enumerate(all_turns(sessions)):
                    samples[name].append(
                        {
                            "round": round_index,
                            "index": index,
                            "utterance": turn.utterance,
                            "warm_up": round_index == 0 and index == 0,
                            "voice_to_voice_ms": turn.voice_to_voice_ms,
                            "transcript_ms": turn.transcript_ms,
                            "user_transcript": turn.user_transcript,
                            "reply": turn.reply_transcript,
                            "response_status": turn.response_status,
                        }
                    )
                errors = [e for s in sessions for e in s.errors]
                print(
                    f"round {round_index + 1}/{args.rounds} {name}: {len(all_turns(sessions))} turns,"
                    f" {len(errors)} errors",
                    flush=True,
                )
    server_turns = {name: logged_turns(logs / f"remote_llm.{name}.log") for name in CONFIGS}
    config = {**vars(args), "out": str(args.out), "llama_server": command}
    return {"config": config, "envs": envs, "samples": samples, "server_turns": server_turns}


def logged_turns(log_path: Path) -> list[dict[str, Any]]:
    """The server's own per-turn figures (its "turn" log lines: asr_final_ms,
    llm_first_token_ms, tts_first_audio_ms, ...), in the order the turns ended."""
    turns = []
    for line in log_path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and record.get("msg") == "turn":
                turns.append(record)
    return turns


def with_server_figures(
    samples: dict[str, list[dict[str, Any]]], server_turns: dict[str, list[dict[str, Any]]]
) -> dict[str, list[dict[str, Any]]]:
    """The samples with each turn's SERVER_FIELDS from its server's log. One session per
    utterance, one after another: the n-th logged turn is the n-th sample. A configuration
    whose counts differ (a turn without a log line) gets none."""
    out = {}
    for name, rows in samples.items():
        logged = server_turns.get(name, [])
        if len(logged) != len(rows):
            out[name] = rows
            continue
        out[name] = [
            {**row, **{f: turn.get(f) for f in SERVER_FIELDS}} for row, turn in zip(rows, logged, strict=True)
        ]
    return out


def _server_field(field: str) -> Callable[[dict[str, Any]], float | None]:
    return lambda sample: sample.get(field)


def report(result: dict[str, Any]) -> str:
    """Per metric: each configuration's p50/p90, then each pair's paired differences."""
    samples = with_server_figures(result["samples"], result.get("server_turns") or {})
    keyed = keyed_samples(samples, CONFIGS)
    metrics = {**TURN_METRICS, **{f"{f} (server log)": _server_field(f) for f in SERVER_FIELDS}}
    lines = paired_lines(keyed, metrics, CONFIGS, PAIRS, 15)
    replies = {name: sum(1 for s in keyed[name].values() if not s["reply"]) for name in CONFIGS}
    lines.append("empty replies: " + ", ".join(f"{name} {n}" for name, n in replies.items()))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.report is not None:
        print(report(json.loads(args.report.read_text())))
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    try:
        result = asyncio.run(run(args))
    except BenchError as exc:
        print(f"remote_llm: {exc}", file=sys.stderr)
        return 2
    print(report(result))
    args.out.write_text(json.dumps(result, indent=1, default=str))
    print(f"raw samples: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
