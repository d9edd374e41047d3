"""The soak script's short CI variant: ~20 s against a spawned server with fake models
(loadtests.fake_server: instant FakeAsr/FakeLlm/FakeTts, the fake energy VAD). Counts, not
times: no error for the well-behaved clients, every malformed message answered with an error,
and no session, asyncio task or file descriptor left over once the load has drained."""

from __future__ import annotations

import json
from pathlib import Path

from loadtests.soak import Sample, growth_table, main, rss_slope_mib_per_10min


def test_short_soak_with_fake_models(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    argv = ["--spawn", "fake", "--duration", "16s", "--concurrent", "2", "--abusers", "1"]
    argv += ["--sample-every", "2", "--out", str(out), "--log", str(tmp_path / "server.log")]
    main(argv)  # its exit status also holds the RSS verdict, which 16 s cannot judge
    report = json.loads(out.read_text())

    assert report["well_behaved_errors"] == {}
    growth = {g["name"]: g for g in report["growth"]}
    assert growth["asyncio_tasks"]["growth"] <= 0
    assert growth["sessions"]["after"] == 0
    assert growth["open_fds"]["growth"] <= 4
    # the load really ran: sessions set up and torn down, turns answered, abuse answered
    assert report["sequential"]["sessions"] >= 20
    assert set(report["sequential"]["by_kind"]) == {"connect", "typed", "spoken"}
    assert [p["name"] for p in report["phases"]] == ["quiet", "abused"]
    assert all(p["turns"] >= 2 and p["errors"] == {} for p in report["phases"])
    assert report["abuse"]["messages"] > 0 and report["abuse"]["failures"] == {}
    assert report["abuse"]["answered"] == report["abuse"]["messages"]
    assert len(report["samples"]) >= 3


def test_growth_verdicts_and_rss_slope() -> None:
    before = {"rss_kb": 100_000, "open_fds": 16, "asyncio_tasks": 3, "sessions": 0}
    after = {"rss_kb": 130_000, "open_fds": 17, "asyncio_tasks": 4, "sessions": 0}
    verdicts = {g.name: g.is_within_noise for g in growth_table(before, after, rss_noise_kb=16 * 1024)}
    assert verdicts == {"rss_kb": False, "open_fds": True, "asyncio_tasks": False, "sessions": True}
    # 1 MiB a minute over the second half is 10 MiB per 10 minutes
    samples = [Sample(60.0 * m, {"rss_kb": 50_000 + 1024 * m}) for m in range(10)]
    slope = rss_slope_mib_per_10min(samples)
    assert slope is not None and abs(slope - 10.0) < 1e-6
    assert rss_slope_mib_per_10min(samples[:2]) is None
