// Injected into the page by tests/browser/test_firefox.py: drives one conversation through the
// page's own buttons and POSTs snapshots of window.voxgate to /test-report. Firefox's fake
// microphone is a steady tone: the fake voice detector hears it as speech while the mic is on.

const report = (body) =>
  fetch("/test-report", { method: "POST", body: JSON.stringify(body) }).catch(() => {});
window.addEventListener("error", (e) => report({ step: "pageerror", message: `${e.message} at ${e.filename}:${e.lineno}` }));
window.addEventListener("unhandledrejection", (e) => report({ step: "pageerror", message: String(e.reason) }));

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
async function until(predicate, timeoutMs) {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    try {
      if (predicate()) return true;
    } catch {
      // window.voxgate not there yet
    }
    await sleep(50);
  }
  return false;
}
const v = () => window.voxgate;
const snapshot = (step, ok) =>
  report({
    step,
    ok,
    userAgent: navigator.userAgent,
    state: v()?.state,
    counters: v()?.counters,
    transcript: v()?.transcript,
    truncatesSent: v()?.truncatesSent,
    truncatedReceived: v()?.truncatedReceived,
    latencies: v()?.latencies,
    errors: v()?.errors,
  });
const mic = () => document.getElementById("mic-btn").click();

(async () => {
  snapshot("ready", await until(() => v().state.connection === "ready", 10000));
  mic();
  snapshot("speaking", await until(() => v().state.who === "user", 10000));
  await sleep(800);
  mic(); // stop: the page sends trailing silence, the turn ends, the reply plays
  snapshot("playing", await until(() => v().counters.samplesPlayed > 12000, 15000));
  mic(); // talk over the reply
  snapshot("cut", await until(() => v().truncatedReceived.some((t) => t.audioEndMs === v().truncatesSent[0]?.audioEndMs), 10000));
  await sleep(600);
  mic();
  snapshot(
    "done",
    await until(() => v().transcript.filter((e) => e.role === "assistant" && e.status === "completed").length > 0 && v().state.audioItemId === null, 15000),
  );
})();
