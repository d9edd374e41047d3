"""Short real runs: the `voxgate loadtest` command and the gateway-overhead benchmark against
the real server code serving instant fake models (loadtests/fake_server.py; named as such)."""

from __future__ import annotations

import asyncio
import json
import wave
from pathlib import Path

import pytest

from loadtests import gateway_overhead
from loadtests.corpus import SAMPLE_RATE_HZ
from loadtests.fake_server import fake_model_app
from loadtests.loadtest import main as loadtest_main
from server.cli import main as voxgate_main
from tests.harness import running_server
from tests.loadtests.scripted_server import tone_clip


def write_clips(directory: Path) -> Path:
    """Two tone clips as WAV files, one with a transcript beside it (like --audio expects)."""
    directory.mkdir(parents=True)
    for name, tone_ms in (("short", 500), ("long", 900)):
        clip = tone_clip(name, lead_ms=200, tone_ms=tone_ms, tail_ms=200)
        with wave.open(str(directory / f"{name}.wav"), "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(SAMPLE_RATE_HZ)
            wav.writeframes(clip.samples.astype("<i2").tobytes())
    (directory / "short.txt").write_text("where is my order\n")
    return directory


async def test_loadtest_command_against_the_server_with_fake_models(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    audio = write_clips(tmp_path / "audio")
    out = tmp_path / "out"
    async with running_server(fake_model_app("energy")) as base_url:
        url = base_url.replace("http://", "ws://") + "/v1/realtime"
        argv = [
            "--url", url, "--sessions", "2", "--duration", "5s", "--ramp", "0.5s", "--audio", str(audio),
            "--barge-in-rate", "0.5", "--out", str(out), "--name", "run", "--progress-every", "1s",
            "--target", "voice_to_voice_p95=2s", "--target", "failed_turns=0%",
        ]  # fmt: skip
        status = await asyncio.to_thread(loadtest_main, argv)
    captured = capsys.readouterr()
    assert status == 0, captured.out + captured.err
    assert "verdict: PASS" in captured.out
    assert captured.err.count(" up (") >= 3  # a progress line a second
    report = json.loads((out / "run.json").read_text())
    (step,) = report["steps"]
    counts = step["counts"]
    assert counts["callers"] == 2 and counts["turns"] >= 3
    assert counts["refused"] == counts["dropped"] == counts["failed_turns"] == 0
    latency = step["latency_ms"]
    assert latency["voice_to_voice"]["n"] >= 3 and latency["voice_to_voice"]["p95"] < 2000
    assert latency["endpoint_to_audio"]["p50"] < 200  # the fakes are instant
    stages = {row["name"]: row for row in step["server"]["stages"]}
    assert stages["voxgate_voice_to_voice_seconds"]["count"] >= 3  # the server's own view, scraped
    assert step["server"]["counters"]["voxgate_sessions_total"] == 2
    rows = (out / "run.csv").read_text().splitlines()
    assert len(rows) == 1 + counts["turns"]
    assert (out / "run.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(report["config"]["utterances"]) == ["long", "short"]


def test_voxgate_loadtest_subcommand_delegates(capsys: pytest.CaptureFixture[str]) -> None:
    assert voxgate_main(["loadtest", "--url", "http://127.0.0.1:1/v1/realtime"]) == 2
    assert "ws:// or wss://" in capsys.readouterr().err


def test_gateway_overhead_with_the_server_in_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    audio = write_clips(tmp_path / "audio")
    argv = [
        "--server", "inprocess", "--vad", "energy", "--audio", str(audio), "--sessions", "2",
        "--duration", "2s", "--baseline-duration", "2s", "--ramp", "0s", "--out", str(tmp_path),
        "--name", "overhead", "--target-ms", "1000", "--reply", "Sure.",
    ]  # fmt: skip
    status = gateway_overhead.main(argv)
    out = capsys.readouterr().out
    assert status == 0, out
    assert "instant fake models (FakeAsr, FakeLlm, FakeTts; zero delays)" in out
    assert "target: added p99 <= 1000 ms at 2 sessions: MET" in out
    report = json.loads((tmp_path / "overhead.json").read_text())
    assert report["model"].startswith("instant fake models")
    for step in ("baseline", "loaded"):
        assert report[step]["server_cpu_s"] > 0 and report[step]["server_cores_per_session"] > 0
        assert report[step]["latency_ms"]["endpoint_to_audio"]["n"] >= 1
    assert (tmp_path / "overhead.png").read_bytes()[:4] == b"\x89PNG"
