// The settings the user applied in the panel, kept in localStorage, and the session.update that
// carries them. Only applied settings are sent: the rest stays the server's default.

const STORAGE_KEY = "voxgate.settings";

/**
 * {voice?, profile?, turnDetection?, threshold?, silenceMs?, eagerness?, instructions?} as last
 * applied, or {}. `turnDetection` is "server_vad" (a silence of `silenceMs` ends a turn) or
 * "semantic_vad" (the caller's words set the silence, by `eagerness`).
 */
export function loadSettings() {
  try {
    return JSON.parse(localStorage.getItem(STORAGE_KEY) ?? "{}") ?? {};
  } catch {
    return {};
  }
}

export function saveSettings(settings) {
  try {
    localStorage.setItem(STORAGE_KEY, JSON.stringify(settings));
  } catch {
    // private browsing: settings last for this page only
  }
}

/** The model name to connect with: a profile is chosen by it (voxgate-fast, voxgate-quality). */
export function modelName(settings) {
  return settings.profile ? `voxgate-${settings.profile}` : null;
}

export const TURN_DETECTION_TYPES = ["server_vad", "semantic_vad"];
export const EAGERNESS_LEVELS = ["auto", "low", "medium", "high"];

/**
 * The turn_detection of a session.update: the applied settings over the type the server's
 * `session` runs (its default until the user picks one), or undefined when the user applied
 * none of them. Each type gets only its own fields, as OpenAI defines them: threshold and
 * silence_duration_ms for server_vad, eagerness for semantic_vad (the server refuses
 * eagerness with server_vad, and does not echo a threshold under semantic_vad).
 */
export function turnDetection(settings, session) {
  const applied = ["turnDetection", "threshold", "silenceMs", "eagerness"].some((k) => settings[k] !== undefined);
  if (!applied) return undefined;
  // a session.update without type means server_vad: name the type the session runs
  const type = settings.turnDetection ?? session?.audio?.input?.turn_detection?.type ?? "server_vad";
  const td = { type };
  if (type === "server_vad") {
    if (settings.threshold !== undefined) td.threshold = settings.threshold;
    if (settings.silenceMs !== undefined) td.silence_duration_ms = settings.silenceMs;
  } else if (settings.eagerness !== undefined) {
    td.eagerness = settings.eagerness;
  }
  return td;
}

/**
 * session.update (GA shape): PCM16 both ways at the given rates, plus the applied settings.
 * `session` is the server's current one (or null): turn detection keeps its type unless the
 * user chose one.
 */
export function sessionUpdate(settings, { inputRateHz, outputRateHz }, session = null) {
  const input = { format: { type: "audio/pcm", rate: inputRateHz } };
  const td = turnDetection(settings, session);
  if (td) input.turn_detection = td;
  const output = { format: { type: "audio/pcm", rate: outputRateHz } };
  if (settings.voice) output.voice = settings.voice;
  const body = {
    type: "realtime",
    output_modalities: ["audio"],
    audio: { input, output },
  };
  if (settings.instructions !== undefined) body.instructions = settings.instructions;
  return { type: "session.update", session: body };
}

/**
 * The settings form's fields, as elements: voice, profile, turnDetection, threshold, silence,
 * eagerness, instructions.
 */
export function readForm(fields) {
  return {
    voice: fields.voice.value.trim() || undefined,
    profile: fields.profile.value || undefined,
    turnDetection: fields.turnDetection.value,
    threshold: Number(fields.threshold.value),
    silenceMs: Number(fields.silence.value),
    eagerness: fields.eagerness.value,
    instructions: fields.instructions.value,
  };
}

/** Fill the form: applied settings first, else what the server's session says. */
export function fillForm(fields, settings, session) {
  const td = session?.audio?.input?.turn_detection;
  fields.voice.value = settings.voice ?? session?.audio?.output?.voice ?? "";
  fields.profile.value = settings.profile ?? "";
  fields.turnDetection.value = pick(TURN_DETECTION_TYPES, settings.turnDetection ?? td?.type, "server_vad");
  fields.threshold.value = String(settings.threshold ?? td?.threshold ?? 0.5);
  fields.silence.value = String(settings.silenceMs ?? td?.silence_duration_ms ?? 300);
  fields.eagerness.value = pick(EAGERNESS_LEVELS, settings.eagerness ?? td?.eagerness, "auto");
  fields.instructions.value = settings.instructions ?? session?.instructions ?? "";
}

function pick(choices, value, fallback) {
  return choices.includes(value) ? value : fallback;
}
