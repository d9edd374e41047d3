// The Voxgate voice client: wires the websocket, the audio worklets and the page together.
//
// Protocol: OpenAI Realtime, GA dialect, on /v1/realtime of this page's origin. The page sends
// session.update (PCM16 24 kHz both ways, server or semantic VAD, voice, instructions), streams
// the microphone as 20 ms input_audio_buffer.append events, and plays
// response.output_audio.delta. When the user talks over a reply
// (input_audio_buffer.speech_started) or presses Interrupt, playback stops at once and the page
// sends conversation.item.truncate with what it actually played. Stopping the microphone ends
// the user's turn (endTurnOnStop).
//
// Test hooks: window.voxgate (see `hooks` at the end).

import { refusalReason, saveAccessToken, takeAccessToken } from "./access.js";
import { AudioEngine, MicrophoneError, playedAtCut } from "./audio.js";
import { RealtimeConnection, realtimeUrl } from "./connection.js";
import { base64ToBuffer, bufferToBase64, silenceBase64 } from "./pcm.js";
import { fillForm, loadSettings, modelName, readForm, saveSettings, sessionUpdate } from "./settings.js";
import { Transcript } from "./transcript.js";
import { View } from "./view.js";
import { VoiceActivity } from "./voice-activity.js";

const RATES = { inputRateHz: 24000, outputRateHz: 24000 };
const FRAME_MS = 20;
const MAX_SOCKET_BACKLOG_BYTES = 256 * 1024; // ~2 s of audio: beyond it, drop frames (counted)
const EVENT_LOG_SIZE = 400;

// server events of both naming dialects, mapped to the GA names this page handles
const ALIASES = {
  "response.audio.delta": "response.output_audio.delta",
  "response.audio.done": "response.output_audio.done",
  "response.audio_transcript.delta": "response.output_audio_transcript.delta",
  "response.audio_transcript.done": "response.output_audio_transcript.done",
  "response.text.delta": "response.output_text.delta",
  "response.text.done": "response.output_text.done",
  "conversation.item.created": "conversation.item.added",
};

// --- state ----------------------------------------------------------------------------------

const state = {
  connection: "connecting", // connecting | open | ready | lost | unreachable | paused
  sessionId: null,
  session: null, // the server's last session object
  sessions: 0, // sessions started on this page (a reconnect starts a new one)
  mic: "off", // off | starting | on
  micError: null, // denied | missing | busy | insecure | unsupported | failed
  userSpeaking: false,
  assistantSpeaking: false,
  responseActive: false,
  responseId: null,
  audioItemId: null, // the reply item whose audio we hold (queued or playing)
  settingsPending: false,
};

const counters = {
  samplesSent: 0, // at RATES.inputRateHz
  framesSent: 0,
  framesDropped: 0,
  samplesReceived: 0, // at RATES.outputRateHz, as are the two below
  samplesPlayed: 0,
  underruns: 0,
  reconnects: 0,
  bargeIns: 0,
};

const itemAudio = new Map(); // itemId -> {receivedSamples, ended}
const droppedItems = new Set(); // items cut by the user: late chunks are not played
const latencies = [];
const truncatesSent = [];
const commitsSent = []; // turns the page ended itself (Stop microphone under semantic_vad)
const truncatedReceived = [];
const errors = [];
const events = [];

const view = new View();
const ui = view.ui;
const transcript = new Transcript(ui.transcript, ui.announcer);
const voice = new VoiceActivity(FRAME_MS); // where speech ended, from the microphone level
let pendingTurn = null; // {speechEndAt, method, stoppedAt}: waiting for the reply's first audio
let lastProgress = null; // the playback worklet's last report
let lastDrained = null; // ... and the last item it played to the end
let settings = loadSettings(); // only what the user applied; the rest stays the server's
let accessToken = takeAccessToken(); // when the server asks for a key (access.js)

const audio = new AudioEngine({ ...RATES, frameMs: FRAME_MS, onFrame, onPlayback });
const connection = new RealtimeConnection({
  url: () => realtimeUrl(window.location, modelName(settings)),
  token: () => accessToken,
  onEvent: handleEvent,
  onStatus: onConnectionStatus,
});

function who() {
  if (state.userSpeaking) return "user";
  if (state.assistantSpeaking) return "assistant";
  if (state.responseActive) return "thinking";
  return state.mic === "on" ? "idle" : "off";
}

function renderSpeaking() {
  view.speaking(who(), Boolean(state.audioItemId || state.responseActive));
}

// --- settings -------------------------------------------------------------------------------

function showSettings(session) {
  fillForm(ui, settings, session);
  ui.accessKey.value = accessToken ?? "";
  view.rangeValues();
  view.turnDetectionFields();
}

function currentSessionUpdate() {
  return sessionUpdate(settings, RATES, state.session);
}

function applySettings(event) {
  event.preventDefault();
  const previousProfile = settings.profile ?? "";
  settings = readForm(ui);
  saveSettings(settings);
  const newToken = ui.accessKey.value.trim() || null;
  if (newToken !== accessToken) {
    accessToken = newToken;
    saveAccessToken(accessToken);
    view.settingsStatus("Reconnecting with the new access key…");
    connection.connect();
    return;
  }
  if ((settings.profile ?? "") !== previousProfile) {
    view.settingsStatus("Reconnecting with the new profile…");
    transcript.divider(`Profile changed to ${settings.profile ?? "server default"}: a new conversation starts`);
    connection.connect();
    return;
  }
  if (state.connection !== "ready") {
    view.settingsStatus("Saved; sent when connected.");
    return;
  }
  state.settingsPending = true;
  view.settingsStatus("Applying…");
  connection.send(currentSessionUpdate());
}

// --- connection -----------------------------------------------------------------------------

function onConnectionStatus(status) {
  const wasReady = state.connection === "ready";
  state.connection = status.phase;
  if (status.phase !== "open" && wasReady) endSession();
  view.connection(status);
  if (status.phase === "unreachable") explainRefusal();
}

/** A websocket refused before it opened, by a server that is up and asks for a key: say so and
 * stop retrying (the same key would be refused again) until the user gives another. */
async function explainRefusal() {
  const token = accessToken;
  const reason = await refusalReason(window.location, token);
  if (reason && token === accessToken && state.connection === "unreachable") connection.pause(reason);
}

/** The session on a socket that just closed is over: stop what belonged to it. */
function endSession() {
  state.sessionId = null;
  state.userSpeaking = false;
  state.responseActive = false;
  state.responseId = null;
  if (state.audioItemId) {
    droppedItems.add(state.audioItemId);
    state.audioItemId = null;
    audio.clearPlayback();
  }
  state.assistantSpeaking = false;
  renderSpeaking();
}

function logEvent(type, raw) {
  const logged = { type, t: Math.round(performance.now()) };
  if (raw.item_id) logged.itemId = raw.item_id;
  if (type === "response.done") {
    logged.status = `${raw.response?.status}/${raw.response?.status_details?.reason ?? ""}`;
  }
  if (type === "conversation.item.truncated") logged.audioEndMs = raw.audio_end_ms;
  events.push(logged);
  if (events.length > EVENT_LOG_SIZE) events.splice(0, events.length - EVENT_LOG_SIZE);
}

// --- server events --------------------------------------------------------------------------

function handleEvent(raw) {
  const type = ALIASES[raw.type] ?? raw.type;
  logEvent(type, raw);
  switch (type) {
    case "session.created":
      onSessionCreated(raw.session);
      break;
    case "session.updated":
      state.session = raw.session;
      if (state.settingsPending) view.settingsStatus("Applied.");
      state.settingsPending = false;
      showSettings(state.session); // what the server runs now (it answers only our updates)
      view.sessionInfo(state.session);
      break;
    case "input_audio_buffer.speech_started":
      onSpeechStarted();
      break;
    case "input_audio_buffer.speech_stopped":
      onSpeechStopped();
      break;
    case "input_audio_buffer.committed":
      state.userSpeaking = false; // a commit the page asked for comes without speech_stopped
      renderSpeaking();
      transcript.userTurn(raw.item_id);
      view.conversationStarted();
      break;
    case "conversation.item.input_audio_transcription.delta":
      transcript.userPartial(raw.item_id, raw.delta ?? "");
      break;
    case "conversation.item.input_audio_transcription.completed":
      transcript.userFinal(raw.item_id, raw.transcript ?? "");
      break;
    case "conversation.item.added":
      onItemAdded(raw.item);
      break;
    case "response.created":
      state.responseActive = true;
      state.responseId = raw.response?.id ?? null;
      renderSpeaking();
      break;
    case "response.output_item.added":
      if (raw.item?.role === "assistant") transcript.assistantItem(raw.item.id);
      view.conversationStarted();
      break;
    case "response.output_audio.delta":
      onAudioDelta(raw.item_id, raw.delta);
      break;
    case "response.output_audio.done":
      endOfItemAudio(raw.item_id);
      break;
    case "response.output_audio_transcript.delta":
    case "response.output_text.delta":
      transcript.assistantDelta(raw.item_id, raw.delta ?? "");
      break;
    case "response.output_audio_transcript.done":
      transcript.assistantDone(raw.item_id, raw.transcript);
      break;
    case "response.output_text.done":
      transcript.assistantDone(raw.item_id, raw.text);
      break;
    case "response.done":
      onResponseDone(raw.response ?? {});
      break;
    case "conversation.item.truncated":
      truncatedReceived.push({ itemId: raw.item_id, audioEndMs: raw.audio_end_ms });
      transcript.truncated(raw.item_id, raw.audio_end_ms);
      break;
    case "error":
      onServerError(raw.error ?? {});
      break;
    default:
      break;
  }
}

function onSessionCreated(session) {
  state.session = session;
  state.sessionId = session?.id ?? null;
  state.sessions += 1;
  if (state.sessions > 1) {
    counters.reconnects += 1;
    transcript.divider("Reconnected: a new conversation started");
  }
  state.connection = "ready";
  view.connection({ phase: "ready" });
  showSettings(session);
  view.sessionInfo(session);
  connection.send(currentSessionUpdate());
  state.settingsPending = Object.keys(settings).length > 0;
  renderSpeaking();
}

function onItemAdded(item) {
  if (!item || item.role !== "user") return;
  const text = (item.content ?? []).find((part) => part.type === "input_text")?.text;
  if (text) transcript.userText(item.id, text);
}

function onAudioDelta(itemId, b64) {
  if (!itemId || !b64 || droppedItems.has(itemId)) return;
  const pcm = base64ToBuffer(b64);
  const samples = pcm.byteLength / 2;
  counters.samplesReceived += samples;
  let audioState = itemAudio.get(itemId);
  if (!audioState) {
    audioState = { receivedSamples: 0, ended: false };
    itemAudio.set(itemId, audioState);
  }
  audioState.receivedSamples += samples;
  transcript.addAudio(itemId, (samples * 1000) / RATES.outputRateHz);
  state.audioItemId = itemId;
  audio.play(itemId, pcm);
  renderSpeaking();
  view.stats(counters, RATES);
}

function endOfItemAudio(itemId) {
  const audioState = itemAudio.get(itemId);
  if (audioState && !audioState.ended) {
    audioState.ended = true;
    audio.endOfItem(itemId);
  }
  transcript.audioComplete(itemId);
}

function onResponseDone(response) {
  if (response.id === state.responseId) {
    state.responseActive = false;
    state.responseId = null;
  }
  const item = (response.output ?? []).find((o) => o.role === "assistant");
  if (item) {
    if (response.status === "cancelled" && item.id === state.audioItemId) {
      // the server cut this reply (it heard the user start, just before speech_started, or
      // another client asked): stop now and report the position actually played
      const bargeIn = response.status_details?.reason === "turn_detected";
      if (bargeIn) counters.bargeIns += 1;
      stopReply(bargeIn ? "barge-in" : "cancelled");
    }
    endOfItemAudio(item.id);
    transcript.responseDone(item.id, response.status);
  }
  renderSpeaking();
}

function onServerError(error) {
  errors.push(error);
  if (error.code === "model_unavailable") {
    connection.pause(`The chosen profile is not available on this server: ${error.message}`);
  }
  view.error(error);
}

// --- turns, barge-in, latency -----------------------------------------------------------------

function onSpeechStarted() {
  state.userSpeaking = true;
  pendingTurn = null;
  if (state.audioItemId) {
    counters.bargeIns += 1;
    stopReply("barge-in");
  }
  renderSpeaking();
}

function onSpeechStopped() {
  state.userSpeaking = false;
  const now = performance.now();
  const silenceMs = state.session?.audio?.input?.turn_detection?.silence_duration_ms ?? 300;
  const local = voice.speechEndBefore(now, silenceMs);
  pendingTurn =
    local !== null
      ? { speechEndAt: local, method: "local", stoppedAt: now }
      : { speechEndAt: now - silenceMs, method: "server", stoppedAt: now };
  renderSpeaking();
}

/** Stop the reply now, drop what is queued, and tell the server what was actually played. */
async function stopReply(reason) {
  const itemId = state.audioItemId;
  if (!itemId) return;
  state.audioItemId = null;
  droppedItems.add(itemId);
  state.assistantSpeaking = false;
  renderSpeaking();
  const cleared = await audio.clearPlayback();
  const received = itemAudio.get(itemId)?.receivedSamples ?? 0;
  const played = Math.min(playedAtCut(itemId, cleared, lastDrained, lastProgress), received);
  // what reached the speaker: the worklet's position less the output path's latency
  const playedMs = (played * 1000) / RATES.outputRateHz;
  const audioEndMs = Math.max(0, Math.floor(playedMs - audio.outputLatencyS * 1000));
  const sent = connection.send({
    type: "conversation.item.truncate",
    item_id: itemId,
    content_index: 0,
    audio_end_ms: audioEndMs,
  });
  truncatesSent.push({
    itemId,
    audioEndMs,
    reason,
    playedSamples: played,
    receivedSamples: received,
    sent,
    at: Math.round(performance.now()),
  });
  transcript.truncated(itemId, audioEndMs);
}

async function interrupt() {
  if (state.responseActive) {
    connection.send({ type: "response.cancel" });
    state.responseActive = false;
  }
  await stopReply("button");
  renderSpeaking();
}

function onPlayback(msg) {
  switch (msg.type) {
    case "started":
      state.assistantSpeaking = true;
      if (pendingTurn) {
        const now = performance.now();
        const latencyMs = now - pendingTurn.speechEndAt;
        latencies.push({
          itemId: msg.itemId,
          latencyMs,
          method: pendingTurn.method,
          speechEndAt: Math.round(pendingTurn.speechEndAt),
          speechStoppedAt: Math.round(pendingTurn.stoppedAt),
          playedAt: Math.round(now),
        });
        transcript.setLatency(msg.itemId, latencyMs, pendingTurn.method);
        pendingTurn = null;
      }
      break;
    case "progress":
      lastProgress = msg;
      counters.samplesPlayed = msg.totalPlayed;
      counters.underruns = msg.underruns;
      state.assistantSpeaking = msg.state !== "idle" && state.audioItemId !== null;
      break;
    case "drained":
      lastDrained = msg;
      counters.samplesPlayed = msg.totalPlayed;
      if (state.audioItemId === msg.itemId) state.audioItemId = null;
      state.assistantSpeaking = false;
      break;
    case "cleared":
      counters.samplesPlayed = msg.totalPlayed;
      state.assistantSpeaking = false;
      break;
    default:
      break;
  }
  renderSpeaking();
  view.stats(counters, RATES, msg.type !== "progress");
}

// --- microphone -----------------------------------------------------------------------------

function onFrame(pcm, rms, peak) {
  voice.push(20 * Math.log10(Math.max(rms, 1e-6)), performance.now());
  view.level(20 * Math.log10(Math.max(peak, 1e-6)));
  view.stats(counters, RATES);
  if (state.connection !== "ready") return;
  if (connection.bufferedAmount > MAX_SOCKET_BACKLOG_BYTES) {
    counters.framesDropped += 1;
    return;
  }
  if (connection.send({ type: "input_audio_buffer.append", audio: bufferToBase64(pcm) })) {
    counters.samplesSent += pcm.byteLength / 2;
    counters.framesSent += 1;
  }
}

/**
 * The user pressed Stop microphone: they are done, so a turn they were in ends now.
 *
 * server_vad: silence_duration_ms + 300 ms of silence, sent at once, ends the turn exactly as
 * if they had paused; it cannot race the server, which reads the audio in order.
 * semantic_vad: no fixed silence does that, as an unfinished sentence waits up to the
 * eagerness' maximum (8 s at low) and the score of the words arrives when it does. A turn the
 * server announced (speech_started) and has not ended is committed and answered instead:
 * input_audio_buffer.commit, then response.create (unless the session does not create
 * responses). The commit can cross the server's own end of the turn on the wire (a round
 * trip's window); when no turn is known to be open, the silence is sent as in server_vad.
 */
function endTurnOnStop() {
  if (state.connection !== "ready") return;
  const td = state.session?.audio?.input?.turn_detection;
  if (td?.type === "semantic_vad" && state.userSpeaking) {
    commitTurn(td);
  } else {
    sendTrailingSilence(td);
  }
}

function commitTurn(td) {
  if (!connection.send({ type: "input_audio_buffer.commit" })) return;
  commitsSent.push({ at: Math.round(performance.now()), turnDetection: td.type });
  if (td.create_response !== false) connection.send({ type: "response.create" });
  state.userSpeaking = false;
  const now = performance.now();
  pendingTurn = { speechEndAt: now, method: "stop", stoppedAt: now };
  renderSpeaking();
}

/** Silence that makes the server's voice detector end a turn the user was in the middle of. */
function sendTrailingSilence(td) {
  const silenceMs = td?.silence_duration_ms ?? 300;
  const frame = silenceBase64(FRAME_MS, RATES.inputRateHz);
  for (let ms = 0; ms < silenceMs + 300; ms += FRAME_MS) {
    if (!connection.send({ type: "input_audio_buffer.append", audio: frame })) return;
    counters.samplesSent += (RATES.inputRateHz * FRAME_MS) / 1000;
  }
}

function setMic(mic) {
  state.mic = mic;
  view.mic(mic);
  renderSpeaking();
}

async function toggleMicrophone() {
  if (state.mic === "on") {
    audio.stopMicrophone();
    voice.interrupt(); // the user is no longer heard: a voice run ends here
    endTurnOnStop();
    setMic("off");
    return;
  }
  if (state.mic === "starting") return;
  setMic("starting");
  view.hideNotice(["mic"]);
  try {
    await audio.startMicrophone();
    state.micError = null;
    setMic("on");
  } catch (err) {
    state.micError = err instanceof MicrophoneError ? err.kind : "failed";
    view.notice(err.message, "mic");
    console.error("microphone", err);
    setMic("off");
  }
}

audio.onMicrophoneEnded = () => {
  audio.stopMicrophone();
  setMic("off");
  view.notice("The microphone stopped (was it unplugged?). Press Start microphone to try again.", "mic");
};

// --- start ----------------------------------------------------------------------------------

ui.mic.addEventListener("click", toggleMicrophone);
ui.interrupt.addEventListener("click", interrupt);
ui.retry.addEventListener("click", () => connection.retryNow());
ui.form.addEventListener("submit", applySettings);
ui.threshold.addEventListener("input", () => view.rangeValues());
ui.silence.addEventListener("input", () => view.rangeValues());
ui.turnDetection.addEventListener("change", () => view.turnDetectionFields());
document.addEventListener("keydown", (event) => {
  const typing = event.target instanceof HTMLInputElement || event.target instanceof HTMLTextAreaElement;
  if (event.key === "Escape" && !typing && !ui.interrupt.disabled) {
    event.preventDefault();
    interrupt();
  }
});
window.addEventListener("online", () => connection.retryNow());
window.addEventListener("pagehide", () => connection.close());

showSettings(null);
if (window.matchMedia("(min-width: 900px)").matches) ui.details.open = true; // room for it
setMic("off");
view.stats(counters, RATES, true);
connection.connect();

const hooks = {
  get state() {
    return {
      connection: state.connection,
      sessionId: state.sessionId,
      sessions: state.sessions,
      mic: state.mic,
      micError: state.micError,
      who: who(),
      responseActive: state.responseActive,
      audioItemId: state.audioItemId,
      connectionStatus: connection.status,
      connectionText: ui.connectionText.textContent,
      notice: view.noticeText,
    };
  },
  counters,
  get transcript() {
    return transcript.snapshot();
  },
  latencies,
  truncatesSent,
  truncatedReceived,
  commitsSent,
  errors,
  events,
  get session() {
    return state.session;
  },
  retryNow: () => connection.retryNow(),
  send: (event) => connection.send(event), // tests: provoke server errors
};
window.voxgate = hooks;
