"""Load and latency tests for Voxgate, driven over the OpenAI Realtime websocket protocol.

The latency benchmark (`python -m loadtests.bench_latency --help`):
- `corpus`: test utterances (Debian's recorded speech, flite-synthesised sentences, or a
  directory of WAV files) at 24 kHz, each with its reference transcript and where its speech
  ends, measured from the audio;
- `session`: one realtime session that speaks like a live microphone and times each turn,
  with `microphone` (real-time pacing) and `recorder` (events -> per-turn metrics, no I/O);
- `wer`, `stats`: word error rate and percentiles;
- `bench_latency`: the command line.

The load test (`voxgate loadtest --help`, or `python -m loadtests.loadtest --help`):
- `load`: N concurrent callers (sessions) for a duration in one asyncio process;
- `step`: one session count, in this process or fanned out to K processes, merged;
- `histogram`: HDR latency histograms; `target`: durations, targets, verdicts, capacity;
- `prometheus`: the server's /metrics before and after, as a per-stage view;
- `report`: tables, counts, CSV and JSON; `plot`: PNG plots (matplotlib, Agg);
- `loadtest`: the command line, with `--sweep` for capacity.

The gateway-overhead benchmark (`python -m loadtests.gateway_overhead --help`) runs the load
test against `fake_server` (Voxgate with instant fake models) to measure the gateway itself.

The clients import nothing from the server: they measure it from the outside, like any client.
Only `fake_server` (and `gateway_overhead`, which starts it) import the server.
"""
