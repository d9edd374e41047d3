// The settings the user applied in the panel, kept in localStorage, and the session.update that
// carries them. Only applied settings are sent: the rest stays the server's default.

const STORAGE_KEY = "voxgate.settings";

/** {voice?, profile?, threshold?, silenceMs?, instructions?} as last applied, or {}. */
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

/** session.update (GA shape): PCM16 both ways at the given rates, plus the applied settings. */
export function sessionUpdate(settings, { inputRateHz, outputRateHz }) {
  const turnDetection = { type: "server_vad" };
  if (settings.threshold !== undefined) turnDetection.threshold = settings.threshold;
  if (settings.silenceMs !== undefined) turnDetection.silence_duration_ms = settings.silenceMs;
  const output = { format: { type: "audio/pcm", rate: outputRateHz } };
  if (settings.voice) output.voice = settings.voice;
  const session = {
    type: "realtime",
    output_modalities: ["audio"],
    audio: {
      input: { format: { type: "audio/pcm", rate: inputRateHz }, turn_detection: turnDetection },
      output,
    },
  };
  if (settings.instructions !== undefined) session.instructions = settings.instructions;
  return { type: "session.update", session };
}

/** The settings form's fields, as elements: voice, profile, threshold, silence, instructions. */
export function readForm(fields) {
  return {
    voice: fields.voice.value.trim() || undefined,
    profile: fields.profile.value || undefined,
    threshold: Number(fields.threshold.value),
    silenceMs: Number(fields.silence.value),
    instructions: fields.instructions.value,
  };
}

/** Fill the form: applied settings first, else what the server's session says. */
export function fillForm(fields, settings, session) {
  const td = session?.audio?.input?.turn_detection;
  fields.voice.value = settings.voice ?? session?.audio?.output?.voice ?? "";
  fields.profile.value = settings.profile ?? "";
  fields.threshold.value = String(settings.threshold ?? td?.threshold ?? 0.5);
  fields.silence.value = String(settings.silenceMs ?? td?.silence_duration_ms ?? 300);
  fields.instructions.value = settings.instructions ?? session?.instructions ?? "";
}
