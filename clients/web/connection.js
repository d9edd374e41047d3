// The websocket to /v1/realtime, reconnecting by itself with exponential backoff and jitter.
//
// Order of calls: `new RealtimeConnection({url, token, onEvent, onStatus})`, `connect()`; then
// `send(event)` (false while not open), `retryNow()`, `pause(reason)` (no more retries until
// `connect()`), `close()`.
//
// Status (passed to onStatus as {phase, ...}):
//   connecting    first attempt, or a retry in progress
//   open          the socket is open (the session starts with the server's session.created)
//   unreachable   no connection could be made; retrying in `delayMs` (attempt `attempt`)
//   lost          an open connection closed; retrying in `delayMs`
//   paused        not retrying (`reason`), until connect()

export const BACKOFF = { baseMs: 500, capMs: 15000 };

/** Delay before retry number `attempt` (1, 2, ...): exponential, capped, "equal jitter". */
export function backoffDelayMs(attempt, random = Math.random, { baseMs, capMs } = BACKOFF) {
  const ceiling = Math.min(capMs, baseMs * 2 ** Math.max(0, attempt - 1));
  return Math.round(ceiling / 2 + random() * (ceiling / 2));
}

/** ws:// or wss:// URL of the realtime endpoint beside the page: /v1/realtime for a page at /,
 * /voice/v1/realtime for one served at /voice/ (Voxgate mounted into another app). */
export function realtimeUrl(location, model) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const path = location.pathname || "/";
  const base = path.slice(0, path.lastIndexOf("/") + 1);
  const url = new URL(`${scheme}//${location.host}${base}v1/realtime`);
  if (model) url.searchParams.set("model", model);
  return url.toString();
}

/** The websocket subprotocols to offer: "realtime", and the access key or client secret (ek_...)
 * as "openai-insecure-api-key.<token>" when there is one (browsers cannot set headers). */
export function subprotocols(token) {
  return token ? ["realtime", `openai-insecure-api-key.${token}`] : ["realtime"];
}

export class RealtimeConnection {
  constructor({ url, token = () => null, onEvent, onStatus }) {
    this.url = url; // a function returning the URL, read at each attempt
    this.token = token; // a function returning the access key or client secret, or null
    this.onEvent = onEvent;
    this.onStatus = onStatus;
    this.ws = null;
    this.attempt = 0; // failed attempts since the last open
    this.timer = null;
    this.paused = false;
    this.wasOpen = false; // the current socket opened
    this.lastClose = null;
    this.status = { phase: "connecting" };
  }

  get isOpen() {
    return this.ws?.readyState === WebSocket.OPEN;
  }

  connect() {
    this.paused = false;
    clearTimeout(this.timer);
    this.timer = null;
    this.#detach();
    this.#setStatus({ phase: "connecting", attempt: this.attempt + 1 });
    let ws;
    try {
      ws = new WebSocket(this.url(), subprotocols(this.token()));
    } catch (err) {
      this.#setStatus({ phase: "paused", reason: `Bad server address: ${err.message}` });
      this.paused = true;
      return;
    }
    this.ws = ws;
    this.wasOpen = false;
    ws.onopen = () => {
      this.attempt = 0;
      this.wasOpen = true;
      this.#setStatus({ phase: "open" });
    };
    ws.onmessage = (message) => {
      if (typeof message.data !== "string") return;
      let event;
      try {
        event = JSON.parse(message.data);
      } catch {
        return;
      }
      this.onEvent(event);
    };
    ws.onclose = (close) => {
      if (ws !== this.ws) return;
      this.ws = null;
      this.lastClose = { code: close.code, reason: close.reason };
      if (this.paused) return;
      this.#scheduleRetry(this.wasOpen ? "lost" : "unreachable", close);
    };
  }

  send(event) {
    if (!this.isOpen) return false;
    this.ws.send(JSON.stringify(event));
    return true;
  }

  /** Bytes queued in the socket, not yet sent. */
  get bufferedAmount() {
    return this.ws?.bufferedAmount ?? 0;
  }

  retryNow() {
    if (this.isOpen || this.ws?.readyState === WebSocket.CONNECTING) return;
    this.connect();
  }

  /** Stop retrying (e.g. the server said the chosen model is unavailable). */
  pause(reason) {
    this.paused = true;
    clearTimeout(this.timer);
    this.timer = null;
    this.#setStatus({ phase: "paused", reason });
  }

  close() {
    this.paused = true;
    clearTimeout(this.timer);
    this.#detach();
  }

  #detach() {
    const ws = this.ws;
    this.ws = null;
    if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000, "client closing");
  }

  #scheduleRetry(phase, close) {
    this.attempt += 1;
    const delayMs = backoffDelayMs(this.attempt);
    this.#setStatus({ phase, attempt: this.attempt, delayMs, retryAt: Date.now() + delayMs, code: close.code });
    this.timer = setTimeout(() => this.connect(), delayMs);
  }

  #setStatus(status) {
    this.status = status;
    this.onStatus(status);
  }
}
