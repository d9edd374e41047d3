// AudioWorklet processors of the Voxgate page, in one module so both share the resampler.
//
// - "voxgate-capture": microphone -> mono -> PCM16 at the session's input rate, posted to the
//   page in fixed frames (20 ms) with the frame's level.
// - "voxgate-playback": reply PCM16 (the session's output rate) -> speakers through a small
//   jitter buffer; counts what it has actually played, per item, and drops everything queued on
//   "clear" (barge-in), answering with the played position.
//
// The AudioContext runs at the device's rate (44.1 or 48 kHz usually): asking for another rate
// breaks microphone input in some browsers, so rate conversion happens here.

const KERNEL_PHASES = 256; // kernel table resolution per input sample

/**
 * Streaming windowed-sinc (Blackman) sample-rate converter.
 * push(samples) returns the output samples those inputs complete, as a view valid until the
 * next call; flush() returns the remaining tail (zero-padded). Output lags input by `half`
 * input samples (< 1 ms).
 */
class Resampler {
  constructor(inRate, outRate, zeroCrossings = 8) {
    this.step = inRate / outRate; // input samples per output sample
    // cutoff in cycles per input sample: 92% of the lower Nyquist frequency
    const cutoff = 0.5 * Math.min(1, outRate / inRate) * 0.92;
    this.half = Math.ceil(zeroCrossings / (2 * cutoff));
    this.table = new Float32Array(this.half * KERNEL_PHASES + 2);
    for (let i = 0; i < this.table.length; i++) {
      const d = i / KERNEL_PHASES;
      if (d >= this.half) continue;
      const x = 2 * cutoff * d;
      const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
      const w = d / this.half; // 0 at the centre, 1 at the edge
      const blackman = 0.42 + 0.5 * Math.cos(Math.PI * w) + 0.08 * Math.cos(2 * Math.PI * w);
      this.table[i] = 2 * cutoff * sinc * blackman;
    }
    this.buf = new Float32Array(8192);
    this.len = this.half; // leading zeros stand in for the samples before the stream
    this.t = this.half; // position of the next output's centre in `buf`
    this.out = new Float32Array(1024);
  }

  kernel(d) {
    const p = d * KERNEL_PHASES;
    const i = p | 0;
    const f = p - i;
    return this.table[i] + f * (this.table[i + 1] - this.table[i]);
  }

  push(samples) {
    if (this.len + samples.length > this.buf.length) {
      const bigger = new Float32Array(2 * (this.len + samples.length));
      bigger.set(this.buf.subarray(0, this.len));
      this.buf = bigger;
    }
    this.buf.set(samples, this.len);
    this.len += samples.length;
    const most = Math.ceil((this.len - this.t) / this.step) + 1;
    if (most > this.out.length) this.out = new Float32Array(2 * most);
    const buf = this.buf;
    const half = this.half;
    let n = 0;
    let t = this.t;
    while (Math.floor(t) + half < this.len) {
      const base = Math.floor(t);
      const frac = t - base;
      let acc = 0;
      for (let k = 1 - half; k <= half; k++) {
        acc += buf[base + k] * this.kernel(Math.abs(frac - k));
      }
      this.out[n++] = acc;
      t += this.step;
    }
    // keep only the history the next output needs
    const drop = Math.floor(t) - half + 1;
    if (drop > 0) {
      buf.copyWithin(0, drop, this.len);
      this.len -= drop;
      t -= drop;
    }
    this.t = t;
    return this.out.subarray(0, n);
  }

  flush() {
    return this.push(new Float32Array(this.half + Math.ceil(this.step)));
  }
}

class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const { targetRateHz = 24000, frameMs = 20 } = options.processorOptions ?? {};
    this.resampler = new Resampler(sampleRate, targetRateHz);
    this.frameSize = Math.round((targetRateHz * frameMs) / 1000);
    this.frame = new Int16Array(this.frameSize);
    this.fill = 0;
    this.sumSquares = 0;
    this.peak = 0;
    this.mono = new Float32Array(128);
    this.running = true;
    this.port.onmessage = (event) => {
      if (event.data?.type === "stop") this.running = false;
    };
  }

  process(inputs) {
    if (!this.running) return false;
    const channels = inputs[0];
    if (!channels || channels.length === 0) return true;
    const n = channels[0].length;
    if (this.mono.length < n) this.mono = new Float32Array(n);
    const mono = this.mono.subarray(0, n);
    mono.set(channels[0]);
    if (channels.length > 1) {
      for (let c = 1; c < channels.length; c++) {
        const ch = channels[c];
        for (let i = 0; i < n; i++) mono[i] += ch[i];
      }
      const scale = 1 / channels.length;
      for (let i = 0; i < n; i++) mono[i] *= scale;
    }
    const out = this.resampler.push(mono);
    for (let i = 0; i < out.length; i++) {
      const s = Math.max(-1, Math.min(1, out[i]));
      this.frame[this.fill++] = s < 0 ? Math.round(s * 32768) : Math.round(s * 32767);
      this.sumSquares += s * s;
      const a = Math.abs(s);
      if (a > this.peak) this.peak = a;
      if (this.fill === this.frameSize) this.postFrame();
    }
    return true;
  }

  postFrame() {
    const rms = Math.sqrt(this.sumSquares / this.frameSize);
    const pcm = this.frame.buffer;
    this.port.postMessage({ type: "frame", pcm, rms, peak: this.peak }, [pcm]);
    this.frame = new Int16Array(this.frameSize);
    this.fill = 0;
    this.sumSquares = 0;
    this.peak = 0;
  }
}

/**
 * States: idle (nothing queued) -> buffering (waiting for `prebufferMs`, or for the item's
 * end) -> playing -> idle when an ended item has fully played, or back to buffering on an
 * underrun mid-item. Played positions are reported in samples at the source rate.
 */
class PlaybackProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const { sourceRateHz = 24000, prebufferMs = 60, reportMs = 50 } = options.processorOptions ?? {};
    this.sourceRateHz = sourceRateHz;
    this.toSource = sourceRateHz / sampleRate;
    this.prebuffer = Math.round((sampleRate * prebufferMs) / 1000);
    this.reportEvery = Math.round((sampleRate * reportMs) / 1000);
    this.sinceReport = 0;
    this.queue = []; // {itemId, data: Float32Array at the context rate, offset}
    this.buffered = 0; // context-rate samples queued
    this.state = "idle";
    this.receivingItem = null; // the item whose audio is arriving; owns `resampler`
    this.resampler = null;
    this.endedItem = null; // the item whose audio is complete
    this.playingItem = null; // the item whose samples were output last
    this.itemPlayed = 0; // context-rate samples of `playingItem` output so far
    this.totalPlayed = 0;
    this.underruns = 0;
    this.reportedState = "idle";
    this.port.onmessage = (event) => this.onMessage(event.data);
  }

  onMessage(msg) {
    switch (msg.type) {
      case "chunk": {
        if (msg.itemId !== this.receivingItem) {
          this.finishReceiving();
          this.receivingItem = msg.itemId;
          this.resampler = new Resampler(this.sourceRateHz, sampleRate);
        }
        const pcm = new Int16Array(msg.pcm);
        const samples = new Float32Array(pcm.length);
        for (let i = 0; i < pcm.length; i++) samples[i] = pcm[i] / 32768;
        this.enqueue(msg.itemId, this.resampler.push(samples));
        if (this.state === "idle") this.state = "buffering";
        break;
      }
      case "end":
        if (msg.itemId === this.receivingItem) {
          this.finishReceiving();
          this.endedItem = msg.itemId;
        }
        break;
      case "clear": {
        const itemId = this.playingItem ?? this.receivingItem;
        const played = this.playingItem === itemId ? this.itemPlayed : 0;
        const droppedSamples = this.buffered;
        this.queue = [];
        this.buffered = 0;
        this.resampler = null;
        this.receivingItem = null;
        this.endedItem = null;
        this.playingItem = null;
        this.itemPlayed = 0;
        this.state = "idle";
        this.port.postMessage({
          type: "cleared",
          requestId: msg.requestId,
          itemId,
          playedSamples: Math.round(played * this.toSource),
          droppedSamples: Math.round(droppedSamples * this.toSource),
          totalPlayed: Math.round(this.totalPlayed * this.toSource),
        });
        break;
      }
    }
  }

  finishReceiving() {
    if (this.resampler !== null && this.receivingItem !== null) {
      this.enqueue(this.receivingItem, this.resampler.flush());
    }
    this.resampler = null;
    this.receivingItem = null;
  }

  enqueue(itemId, view) {
    if (view.length === 0) return;
    this.queue.push({ itemId, data: view.slice(), offset: 0 });
    this.buffered += view.length;
  }

  process(_inputs, outputs) {
    const channels = outputs[0];
    const out = channels[0];
    const n = out.length;
    let i = 0;
    if (this.state === "buffering") {
      const lastEnded = this.queue.length > 0 && this.queue[this.queue.length - 1].itemId === this.endedItem;
      if (this.buffered >= this.prebuffer || lastEnded) this.state = "playing";
    }
    if (this.state === "playing") {
      while (i < n && this.queue.length > 0) {
        const head = this.queue[0];
        if (head.itemId !== this.playingItem) {
          this.playingItem = head.itemId;
          this.itemPlayed = 0;
          this.port.postMessage({ type: "started", itemId: head.itemId, at: currentTime + i / sampleRate });
        }
        const take = Math.min(n - i, head.data.length - head.offset);
        out.set(head.data.subarray(head.offset, head.offset + take), i);
        head.offset += take;
        i += take;
        this.buffered -= take;
        this.itemPlayed += take;
        this.totalPlayed += take;
        if (head.offset === head.data.length) this.queue.shift();
      }
      if (this.queue.length === 0) {
        if (this.playingItem !== null && this.playingItem === this.endedItem) {
          this.state = "idle";
          this.port.postMessage({
            type: "drained",
            itemId: this.playingItem,
            playedSamples: Math.round(this.itemPlayed * this.toSource),
            totalPlayed: Math.round(this.totalPlayed * this.toSource),
          });
          this.endedItem = null;
          this.playingItem = null;
        } else if (i < n) {
          this.state = "buffering";
          this.underruns++;
        }
      }
    }
    out.fill(0, i);
    for (let c = 1; c < channels.length; c++) channels[c].set(out);
    this.sinceReport += n;
    if (this.sinceReport >= this.reportEvery && (this.state !== "idle" || this.reportedState !== "idle")) {
      this.sinceReport = 0;
      this.reportedState = this.state;
      this.port.postMessage({
        type: "progress",
        state: this.state,
        itemId: this.playingItem,
        playedSamples: Math.round(this.itemPlayed * this.toSource),
        totalPlayed: Math.round(this.totalPlayed * this.toSource),
        bufferedMs: (this.buffered / sampleRate) * 1000,
        underruns: this.underruns,
      });
    }
    return true;
  }
}

registerProcessor("voxgate-capture", CaptureProcessor);
registerProcessor("voxgate-playback", PlaybackProcessor);
