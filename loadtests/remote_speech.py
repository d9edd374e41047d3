"""What remote speech models cost a spoken turn: `python -m loadtests.remote_speech --help`.

    python -m loadtests.remote_speech --rounds 5 --limit 10 --out results/remote_speech.json

Starts three `python -m server serve` processes on loopback, all with the fast profile's
models (PocketSphinx, eSpeak NG) and the rule-based responder, server VAD and no anticipation
(the gateway's remote recogniser does not anticipate, so neither does the baseline):

- "embedded": one Voxgate that runs the recogniser and the voice itself;
- "models": a Voxgate that only serves the speech API (/v1/audio/transcriptions, /v1/audio/speech);
- "remote": a gateway Voxgate with `VOXGATE_ASR=openai-asr VOXGATE_TTS=openai-tts` pointed at it.

Then, round after round, speaks the same corpus utterances at real time (loadtests.session,
one session per round and configuration) to "embedded" and to "remote", alternating which
goes first, and pairs each utterance's figures across the two: voice-to-voice (end of speech
in the audio -> first reply audio) and the user transcript (end of speech -> the
`input_audio_transcription.completed` event). Printed: the medians and p90 of each, and the
median and p10/p90 of the paired differences (remote - embedded). The first round's first
utterance warms each configuration up and is not counted. All figures in ms; raw samples go
to `--out`.

The three servers and the client share this machine's cores: run it on an idle box.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loadtests.bench_latency import BenchError, all_turns, plan_turns, run_plans, spawned_server
from loadtests.corpus import DEFAULT_CACHE_DIR, HUMAN_DATA_DIR, CorpusUnavailable, load_corpus
from loadtests.paired import TURN_METRICS, keyed_samples, paired_lines
from loadtests.session import SessionOptions

BASE_ENV = {
    "VOXGATE_LLM": "rules",
    "VOXGATE_VAD": "webrtc",
    "VOXGATE_ANTICIPATE_REPLIES": "false",
    "VOXGATE_LOG_LEVEL": "warning",
}
CONFIGS = ("embedded", "remote")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.remote_speech", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--corpus", default="human", help="corpus sources (default %(default)s)")
    parser.add_argument("--limit", type=int, default=10, help="utterances per round (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=5, help="paired rounds (default %(default)s)")
    parser.add_argument(
        "--silence-ms", type=int, default=300, help="server VAD silence (default %(default)s)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("results/remote_speech.json"), help="raw samples (JSON)"
    )
    parser.add_argument("--data-dir", type=Path, default=HUMAN_DATA_DIR, help="pocketsphinx-testdata folder")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="synthetic corpus cache")
    return parser


async def run(args: argparse.Namespace) -> dict[str, Any]:
    try:
        corpus = load_corpus(
            [s.strip() for s in args.corpus.split(",") if s.strip()],
            data_dir=args.data_dir,
            cache_dir=args.cache_dir,
        )[: args.limit]
    except (CorpusUnavailable, ValueError) as exc:
        raise BenchError(str(exc)) from exc
    plans = plan_turns(corpus, 1, barge_in_probability=0.0, barge_in_after_ms=0, rng=random.Random(0))
    logs = args.out.parent
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in CONFIGS}
    async with contextlib.AsyncExitStack() as stack:
        models_url, _ = await stack.enter_async_context(
            spawned_server(BASE_ENV, logs / "remote_speech.models.log")
        )
        models_v1 = models_url.replace("ws://", "http://").removesuffix("/realtime")
        remote_env = {
            **BASE_ENV,
            "VOXGATE_ASR": "openai-asr",
            "VOXGATE_TTS": "openai-tts",
            "VOXGATE_BACKEND_OPTIONS": json.dumps(
                {"openai-asr": {"base_url": models_v1}, "openai-tts": {"base_url": models_v1}}
            ),
        }
        urls = {
            "embedded": (
                await stack.enter_async_context(spawned_server(BASE_ENV, logs / "remote_speech.embedded.log"))
            )[0],
            "remote": (
                await stack.enter_async_context(spawned_server(remote_env, logs / "remote_speech.remote.log"))
            )[0],
        }
        for round_index in range(args.rounds):
            order = CONFIGS if round_index % 2 == 0 else tuple(reversed(CONFIGS))
            for name in order:
                options = SessionOptions(url=urls[name], silence_duration_ms=args.silence_ms)
                sessions = await run_plans(options, plans, session_per_utterance=False)
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
                        }
                    )
                errors = [e for s in sessions for e in s.errors]
                print(
                    f"round {round_index + 1}/{args.rounds} {name}: {len(all_turns(sessions))} turns, {len(errors)} errors"
                )
    return {"config": {**vars(args), "out": str(args.out)}, "base_env": BASE_ENV, "samples": samples}


def report(result: dict[str, Any]) -> str:
    keyed = keyed_samples(result["samples"], CONFIGS)
    return "\n".join(paired_lines(keyed, TURN_METRICS, CONFIGS, (("remote", "embedded"),), 9))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    try:
        result = asyncio.run(run(args))
    except BenchError as exc:
        print(f"remote_speech: {exc}", file=sys.stderr)
        return 2
    print(report(result))
    args.out.write_text(json.dumps(result, indent=1, default=str))
    print(f"raw samples: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
