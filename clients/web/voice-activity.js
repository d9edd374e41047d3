// Where the user's speech ended, found locally from the microphone level. The server's
// input_audio_buffer.speech_stopped arrives a silence_duration_ms later by design, so it says
// that a turn ended, not exactly when.
//
// Order of calls: `push(db, nowMs)` for each 20 ms frame's level; `interrupt(nowMs)` when the
// microphone stops; `speechEndBefore(nowMs, silenceMs)` when speech_stopped arrives.

const MIN_RUN_MS = 60; // shorter bursts (clicks) are not voice
const KEPT_RUN_ENDS = 50;

export class VoiceActivity {
  constructor(frameMs = 20) {
    this.frameMs = frameMs;
    this.floorDb = -60; // the noise floor: falls at once, rises ~3 dB per second
    this.voicedRunMs = 0;
    this.lastVoicedAt = null;
    this.runEnds = []; // ends of voiced runs (ms): the candidate ends of speech
  }

  /** One frame's RMS level in dBFS, measured at `nowMs`. Returns whether it sounded voiced. */
  push(db, nowMs) {
    this.floorDb = db < this.floorDb ? db : this.floorDb + Math.min(0.06, db - this.floorDb);
    this.floorDb = Math.min(-30, Math.max(-90, this.floorDb));
    const voiced = db > Math.max(-50, this.floorDb + 15);
    if (voiced) {
      this.voicedRunMs += this.frameMs;
      if (this.voicedRunMs >= MIN_RUN_MS) this.lastVoicedAt = nowMs;
    } else {
      this.interrupt();
    }
    return voiced;
  }

  /** The user can no longer be heard (a silent frame, or the microphone stopped). */
  interrupt() {
    if (this.voicedRunMs >= MIN_RUN_MS && this.lastVoicedAt !== null) {
      this.runEnds.push(this.lastVoicedAt);
      if (this.runEnds.length > KEPT_RUN_ENDS) this.runEnds.shift();
    }
    this.voicedRunMs = 0;
  }

  /**
   * The end of speech that a server, having waited `silenceMs` of silence, announces at `nowMs`:
   * the last end of a voiced run followed by about that much time (the user may have started
   * again since). Null when none is plausible.
   */
  speechEndBefore(nowMs, silenceMs) {
    const end = this.runEnds.findLast((e) => nowMs - e >= silenceMs - 150);
    return end !== undefined && nowMs - end <= silenceMs + 1500 ? end : null;
  }
}
