"""Load and latency tests for Voxgate, driven over the OpenAI Realtime websocket protocol.

The latency benchmark (`python -m loadtests.bench_latency --help`):
- `corpus`: test utterances (Debian's recorded speech, flite-synthesised sentences) at 24 kHz,
  each with its reference transcript and where its speech ends, measured from the audio;
- `session`: one realtime session that speaks like a live microphone and times each turn,
  with `microphone` (real-time pacing) and `recorder` (events -> per-turn metrics, no I/O);
- `wer`, `stats`: word error rate and percentiles;
- `bench_latency`: the command line.

The benchmark imports nothing from the server: it measures it from the outside, like any client.
"""
