// What the page shows outside the conversation: connection state, who is speaking, the
// microphone button and level meter, audio statistics, notices and server errors.
// The View only draws; app.js decides.

const WHO_TEXT = {
  user: "You are speaking",
  assistant: "Assistant is speaking",
  thinking: "Assistant is thinking…",
  idle: "Listening",
  off: "Microphone off",
};

export class View {
  constructor(doc = document) {
    const $ = (id) => doc.getElementById(id);
    this.ui = {
      connection: $("connection"),
      connectionText: $("connection-text"),
      retry: $("retry-btn"),
      speaking: $("speaking"),
      speakingText: $("speaking-text"),
      level: $("level"),
      levelBar: $("level-bar"),
      mic: $("mic-btn"),
      micText: $("mic-btn-text"),
      interrupt: $("interrupt-btn"),
      notice: $("notice"),
      errors: $("errors"),
      transcript: $("transcript"),
      empty: $("empty"),
      announcer: $("announcer"),
      form: $("settings"),
      details: $("settings-details"),
      voice: $("voice"),
      profile: $("profile"),
      threshold: $("threshold"),
      thresholdOut: $("threshold-out"),
      thresholdField: $("threshold-field"),
      turnDetection: $("turn-detection"),
      silence: $("silence"),
      silenceOut: $("silence-out"),
      silenceField: $("silence-field"),
      eagerness: $("eagerness"),
      eagernessField: $("eagerness-field"),
      instructions: $("instructions"),
      accessKey: $("access-key"),
      settingsStatus: $("settings-status"),
      sessionInfo: $("session-info"),
      stats: $("stats"),
    };
    this.countdown = null;
    this.shownWho = null;
    this.meter = { db: -100, shown: 0, on: false, frame: null };
    this.statsShownAt = 0;
  }

  /** The connection's status ({phase, attempt, retryAt, reason}); see connection.js. */
  connection(status) {
    const ui = this.ui;
    clearInterval(this.countdown);
    this.countdown = null;
    ui.connection.dataset.phase = status.phase === "open" ? "connecting" : status.phase;
    ui.retry.hidden = !(status.phase === "lost" || status.phase === "unreachable");
    const text = () => {
      const seconds = status.retryAt ? Math.max(0, Math.ceil((status.retryAt - Date.now()) / 1000)) : 0;
      switch (status.phase) {
        case "connecting":
          return status.attempt > 1 ? `Reconnecting (attempt ${status.attempt})…` : "Connecting…";
        case "open":
          return "Starting session…";
        case "ready":
          return "Connected";
        case "lost":
          return `Connection lost — reconnecting in ${seconds} s`;
        case "unreachable":
          return `Server unreachable — retrying in ${seconds} s`;
        case "paused":
          return status.reason ?? "Disconnected";
        default:
          return status.phase;
      }
    };
    ui.connectionText.textContent = text();
    if (status.retryAt) {
      this.countdown = setInterval(() => {
        ui.connectionText.textContent = text();
      }, 1000);
    }
    if (status.phase === "unreachable") {
      this.notice(
        "The server cannot be reached. It may be stopped or restarting; this page keeps trying and reconnects by itself.",
        "warn",
      );
    } else if (status.phase === "lost") {
      this.notice("The connection to the server was lost. Reconnecting…", "warn");
    } else if (status.phase === "paused") {
      this.notice(status.reason ?? "Disconnected.", "error");
    } else if (status.phase === "ready") {
      this.hideNotice(["warn"]);
    }
  }

  /** mic: off | starting | on */
  mic(mic) {
    const ui = this.ui;
    const on = mic === "on";
    ui.mic.setAttribute("aria-pressed", String(on));
    ui.mic.classList.toggle("on", on);
    ui.micText.textContent = on ? "Stop microphone" : mic === "starting" ? "Starting…" : "Start microphone";
    ui.mic.disabled = mic === "starting";
    this.meter.on = on;
    this.#scheduleMeter();
  }

  /** who: user | assistant | thinking | idle | off */
  speaking(who, canInterrupt) {
    this.ui.interrupt.disabled = !canInterrupt;
    if (who === this.shownWho) return;
    this.shownWho = who;
    this.ui.speaking.dataset.who = who;
    this.ui.speakingText.textContent = WHO_TEXT[who];
  }

  /** A microphone frame's peak level, in dBFS. */
  level(peakDb) {
    this.meter.db = Math.max(this.meter.db, peakDb - 6);
    this.#scheduleMeter();
  }

  #scheduleMeter() {
    this.meter.frame ??= requestAnimationFrame(() => this.#drawMeter());
  }

  #drawMeter() {
    const m = this.meter;
    m.frame = null;
    // -60 dBFS .. 0 dBFS -> 0 .. 100 %, fast attack, slow release
    const target = m.on ? Math.max(0, Math.min(100, ((m.db + 60) / 60) * 100)) : 0;
    m.shown = target > m.shown ? target : m.shown * 0.85 + target * 0.15;
    if (m.shown < 0.5) m.shown = 0;
    m.db -= 3; // decays until the next frame raises it again
    this.ui.levelBar.style.transform = `scaleX(${(m.shown / 100).toFixed(3)})`;
    const rounded = String(Math.round(m.shown / 10) * 10);
    if (this.ui.level.getAttribute("aria-valuenow") !== rounded) this.ui.level.setAttribute("aria-valuenow", rounded);
    if (m.on || m.shown > 0) this.#scheduleMeter(); // an idle page draws nothing
  }

  /** Seconds of audio sent, received and played; at most 4 times a second unless `force`. */
  stats(counters, { inputRateHz, outputRateHz }, force = false) {
    const now = performance.now();
    if (!force && now - this.statsShownAt < 250) return;
    this.statsShownAt = now;
    const s = (samples, rate) => `${(samples / rate).toFixed(1)} s`;
    let text =
      `Audio sent ${s(counters.samplesSent, inputRateHz)} · received ${s(counters.samplesReceived, outputRateHz)}` +
      ` · played ${s(counters.samplesPlayed, outputRateHz)}`;
    if (counters.underruns) text += ` · ${counters.underruns} underruns`;
    if (counters.framesDropped) text += ` · ${counters.framesDropped} frames dropped`;
    this.ui.stats.textContent = text;
  }

  sessionInfo(session) {
    if (!session) return;
    const td = session.audio?.input?.turn_detection;
    const parts = [`Session ${session.id}`, `model ${session.model}`, `voice ${session.audio?.output?.voice ?? "?"}`];
    if (td?.type === "semantic_vad") {
      parts.push(`semantic VAD, eagerness ${td.eagerness}`);
    } else if (td) {
      parts.push(`VAD ${Number(td.threshold).toFixed(2)}, ${td.silence_duration_ms} ms`);
    } else {
      parts.push("no turn detection");
    }
    this.ui.sessionInfo.textContent = parts.join(" · ");
  }

  settingsStatus(text) {
    this.ui.settingsStatus.textContent = text;
  }

  rangeValues() {
    this.ui.thresholdOut.value = Number(this.ui.threshold.value).toFixed(2);
    this.ui.silenceOut.value = `${this.ui.silence.value} ms`;
  }

  /** Show the chosen turn detection's own settings: threshold and silence, or eagerness. */
  turnDetectionFields() {
    const semantic = this.ui.turnDetection.value === "semantic_vad";
    this.ui.thresholdField.hidden = semantic;
    this.ui.silenceField.hidden = semantic;
    this.ui.eagernessField.hidden = !semantic;
  }

  conversationStarted() {
    this.ui.empty.hidden = true;
  }

  /** kind: warn (connection) | mic | error; a later notice replaces an earlier one. */
  notice(text, kind) {
    this.ui.notice.textContent = text;
    this.ui.notice.dataset.kind = kind;
    this.ui.notice.hidden = false;
  }

  hideNotice(kinds) {
    if (kinds.includes(this.ui.notice.dataset.kind)) {
      this.ui.notice.hidden = true;
      this.ui.notice.dataset.kind = "";
    }
  }

  get noticeText() {
    return this.ui.notice.hidden ? null : this.ui.notice.textContent;
  }

  /** A server `error` event's error object; the last three stay, each dismissable. */
  error(error) {
    const item = document.createElement("div");
    item.className = "error";
    const text = document.createElement("p");
    const code = error.code ? ` (${error.code})` : "";
    text.textContent = `Server error${code}: ${error.message ?? "unknown error"}`;
    const close = document.createElement("button");
    close.type = "button";
    close.className = "dismiss";
    close.setAttribute("aria-label", "Dismiss this error");
    close.textContent = "×";
    close.addEventListener("click", () => item.remove());
    item.append(text, close);
    this.ui.errors.append(item);
    while (this.ui.errors.childElementCount > 3) this.ui.errors.firstElementChild.remove();
  }
}
