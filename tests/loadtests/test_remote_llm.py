"""loadtests.remote_llm's arguments, commands and report, on made-up samples (no timing)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loadtests.remote_llm import (
    CONFIGS,
    build_parser,
    llama_server_command,
    logged_turns,
    report,
    round_order,
    server_envs,
)


def test_defaults_and_the_same_threads_and_context_on_both_paths() -> None:
    args = build_parser().parse_args(["--threads", "3", "--n-ctx", "1024"])
    assert (args.rounds, args.limit, args.max_output_tokens) == (4, 6, 48)
    command = llama_server_command(Path("/m.gguf"), 8123, args.threads, args.n_ctx)
    assert command[1:3] == ["-m", "loadtests.llama_server"]
    flags = dict(zip(command[3::2], command[4::2], strict=True))
    assert flags["--n_threads"] == flags["--n_threads_batch"] == "3"
    assert (flags["--n_ctx"], flags["--port"], flags["--host"]) == ("1024", "8123", "127.0.0.1")
    envs = server_envs("http://127.0.0.1:8123/v1", args.threads, args.n_ctx)
    assert set(envs) == set(CONFIGS)
    gemma = json.loads(envs["embedded"]["VOXGATE_BACKEND_OPTIONS"])["gemma"]
    assert gemma == {"n_threads": 3, "n_ctx": 1024}
    assert envs["embedded-noant"]["VOXGATE_ANTICIPATE_REPLIES"] == "false"
    assert "VOXGATE_ANTICIPATE_REPLIES" not in envs["embedded"]  # the default
    remote = json.loads(envs["remote"]["VOXGATE_BACKEND_OPTIONS"])["openai"]
    assert envs["remote"]["VOXGATE_LLM"] == "openai"
    assert remote["base_url"] == "http://127.0.0.1:8123/v1" and remote["model"] == flags["--model_alias"]


def test_each_configuration_goes_first_in_turn() -> None:
    firsts = [round_order(i)[0] for i in range(len(CONFIGS))]
    assert sorted(firsts) == sorted(CONFIGS)
    assert all(sorted(round_order(i)) == sorted(CONFIGS) for i in range(5))


def _sample(
    round_index: int, index: int, v2v: float | None, transcript: float, reply: str = "Sure."
) -> dict[str, Any]:
    return {
        "round": round_index,
        "index": index,
        "warm_up": round_index == 0 and index == 0,
        "voice_to_voice_ms": v2v,
        "transcript_ms": transcript,
        "reply": reply,
    }


def test_report_pairs_turns_and_leaves_out_the_warm_up(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    lines = [{"msg": "turn", "llm_first_token_ms": ms, "tts_first_audio_ms": 2.0} for ms in (900, 100, 120)]
    log.write_text("not json\n" + "\n".join(json.dumps(line) for line in [{"msg": "other"}, *lines]) + "\n")
    assert [t["llm_first_token_ms"] for t in logged_turns(log)] == [900, 100, 120]
    result = {
        "samples": {
            "embedded": [_sample(0, 0, 5000, 300), _sample(0, 1, 400, 300), _sample(1, 0, 500, 300)],
            "embedded-noant": [_sample(0, 0, 5000, 300), _sample(0, 1, 450, 300), _sample(1, 0, 550, 300)],
            "remote": [_sample(0, 0, 9000, 300), _sample(0, 1, 420, 300), _sample(1, 0, None, 300, reply="")],
        },
        "server_turns": {name: logged_turns(log) for name in CONFIGS},
    }
    text = report(result)
    # one pair per comparison: (0, 1); the warm-up (0, 0) is left out, (1, 0) has no remote audio
    assert "remote - embedded, paired: median +20  p10 +20  p90 +20  (n=1)" in text
    assert "remote - embedded-noant, paired: median -30" in text
    # the n-th logged turn is the n-th sample's: 900 is the warm-up's, left out
    assert "llm_first_token_ms (server log)\n  embedded        p50     110" in text
    assert text.endswith("empty replies: embedded 0, embedded-noant 0, remote 1")
