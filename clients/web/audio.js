// The page's audio: one AudioContext at the device's rate, a capture worklet (microphone ->
// PCM16 frames) and a playback worklet (reply PCM16 -> speakers through a jitter buffer).
//
// Order of calls: `await engine.open()` (inside a user gesture the first time, so the context
// may start), then `await engine.startMicrophone()` / `engine.stopMicrophone()` any number of
// times; `engine.play(itemId, pcm)` for each reply chunk, `engine.endOfItem(itemId)` when its
// audio is complete, `await engine.clearPlayback()` to stop at once (barge-in).

const WORKLET_URL = new URL("./audio-worklet.js", import.meta.url);

/** A microphone problem the page explains to the user; `kind` picks the message. */
export class MicrophoneError extends Error {
  constructor(kind, message, cause) {
    super(message, { cause });
    this.kind = kind; // "denied" | "missing" | "busy" | "insecure" | "unsupported" | "failed"
  }
}

/**
 * How much of `itemId` the speaker played when the page cut it, in source samples: the
 * worklet's answer to the clear if it still held the item; else (it had played the item to the
 * end just before the clear, its "drained" first, or it did not answer) the last position it
 * reported for the item; else 0.
 */
export function playedAtCut(itemId, cleared, lastDrained, lastProgress) {
  if (cleared && cleared.itemId === itemId) return cleared.playedSamples;
  if (lastDrained?.itemId === itemId) return lastDrained.playedSamples;
  if (lastProgress?.itemId === itemId) return lastProgress.playedSamples;
  return 0;
}

export function describeMicrophoneError(err) {
  const name = err?.name ?? "";
  if (name === "NotAllowedError" || name === "SecurityError" || name === "PermissionDeniedError") {
    return new MicrophoneError(
      "denied",
      "Microphone permission was denied. Allow microphone access for this page (the icon in the " +
        "address bar), then press Start microphone again.",
      err,
    );
  }
  if (name === "NotFoundError" || name === "OverconstrainedError" || name === "DevicesNotFoundError") {
    return new MicrophoneError("missing", "No microphone was found. Connect one and press Start microphone.", err);
  }
  if (name === "NotReadableError" || name === "AbortError" || name === "TrackStartError") {
    return new MicrophoneError(
      "busy",
      "The microphone could not be started; another application may be using it.",
      err,
    );
  }
  return new MicrophoneError("failed", `The microphone could not be started: ${err?.message ?? err}`, err);
}

export class AudioEngine {
  /**
   * @param {object} options
   * @param {number} options.inputRateHz   PCM rate sent to the server
   * @param {number} options.outputRateHz  PCM rate the server sends
   * @param {number} options.frameMs       capture frame length
   * @param {(pcm: ArrayBuffer, rms: number, peak: number) => void} options.onFrame
   * @param {(msg: object) => void} options.onPlayback   messages from the playback worklet
   */
  constructor({ inputRateHz = 24000, outputRateHz = 24000, frameMs = 20, onFrame, onPlayback }) {
    this.inputRateHz = inputRateHz;
    this.outputRateHz = outputRateHz;
    this.frameMs = frameMs;
    this.onFrame = onFrame;
    this.onPlayback = onPlayback;
    this.context = null;
    this.playback = null;
    this.capture = null;
    this.stream = null;
    this.source = null;
    this.sink = null;
    this.opening = null;
    this.requests = new Map();
    this.nextRequestId = 1;
  }

  get isMicrophoneOn() {
    return this.stream !== null;
  }

  /** Seconds between a sample leaving the worklet and reaching the speaker, where known. */
  get outputLatencyS() {
    const ctx = this.context;
    if (!ctx) return 0;
    const out = Number.isFinite(ctx.outputLatency) ? ctx.outputLatency : 0;
    const base = Number.isFinite(ctx.baseLatency) ? ctx.baseLatency : 0;
    return out + base;
  }

  async open() {
    this.opening ??= this.#open().catch((err) => {
      this.opening = null; // a later gesture may try again
      throw err;
    });
    await this.opening;
    await this.context.resume();
  }

  async #open() {
    if (typeof AudioContext === "undefined" || typeof AudioWorkletNode === "undefined") {
      throw new MicrophoneError("unsupported", "This browser cannot process audio (no AudioWorklet); use a current Chrome or Firefox.");
    }
    const ctx = new AudioContext({ latencyHint: "interactive" });
    try {
      await ctx.audioWorklet.addModule(WORKLET_URL);
    } catch (err) {
      await ctx.close();
      throw new MicrophoneError("unsupported", `The audio worklet failed to load: ${err.message}`, err);
    }
    this.playback = new AudioWorkletNode(ctx, "voxgate-playback", {
      numberOfInputs: 0,
      numberOfOutputs: 1,
      outputChannelCount: [1],
      processorOptions: { sourceRateHz: this.outputRateHz, prebufferMs: 60 },
    });
    this.playback.port.onmessage = (event) => this.#onPlaybackMessage(event.data);
    this.playback.connect(ctx.destination);
    // the capture node is pulled through a silent gain so every browser keeps processing it
    this.sink = ctx.createGain();
    this.sink.gain.value = 0;
    this.sink.connect(ctx.destination);
    this.context = ctx;
  }

  async startMicrophone() {
    if (this.stream) return;
    if (!window.isSecureContext || !navigator.mediaDevices?.getUserMedia) {
      throw new MicrophoneError(
        "insecure",
        "The microphone is only available on a secure page: open this page over https, or on localhost.",
      );
    }
    await this.open();
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
        video: false,
      });
    } catch (err) {
      throw describeMicrophoneError(err);
    }
    const ctx = this.context;
    this.stream = stream;
    this.source = ctx.createMediaStreamSource(stream);
    this.capture = new AudioWorkletNode(ctx, "voxgate-capture", {
      numberOfInputs: 1,
      numberOfOutputs: 1,
      outputChannelCount: [1],
      processorOptions: { targetRateHz: this.inputRateHz, frameMs: this.frameMs },
    });
    this.capture.port.onmessage = (event) => {
      const msg = event.data;
      if (msg.type === "frame") this.onFrame(msg.pcm, msg.rms, msg.peak);
    };
    this.source.connect(this.capture);
    this.capture.connect(this.sink);
    for (const track of stream.getAudioTracks()) {
      track.addEventListener("ended", () => this.onMicrophoneEnded?.());
    }
  }

  stopMicrophone() {
    this.capture?.port.postMessage({ type: "stop" });
    this.capture?.disconnect();
    this.source?.disconnect();
    for (const track of this.stream?.getTracks() ?? []) track.stop();
    this.capture = null;
    this.source = null;
    this.stream = null;
  }

  /** Queue one chunk of reply audio (PCM16 at outputRateHz); the buffer is transferred. */
  play(itemId, pcm) {
    this.playback?.port.postMessage({ type: "chunk", itemId, pcm }, [pcm]);
  }

  /** The item's audio is complete: play out what is queued without waiting for more. */
  endOfItem(itemId) {
    this.playback?.port.postMessage({ type: "end", itemId });
  }

  /**
   * Stop playback now and drop everything queued.
   * Resolves to {itemId, playedSamples, droppedSamples} (samples at outputRateHz) of the item
   * that was playing (or arriving), or null without a playback node.
   */
  clearPlayback() {
    if (!this.playback) return Promise.resolve(null);
    const requestId = this.nextRequestId++;
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.requests.delete(requestId);
        resolve(null);
      }, 500);
      this.requests.set(requestId, (msg) => {
        clearTimeout(timer);
        resolve(msg);
      });
      this.playback.port.postMessage({ type: "clear", requestId });
    });
  }

  #onPlaybackMessage(msg) {
    if (msg.type === "cleared") {
      const resolve = this.requests.get(msg.requestId);
      this.requests.delete(msg.requestId);
      resolve?.(msg);
    }
    this.onPlayback(msg);
  }
}
