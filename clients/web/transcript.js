// The conversation as text: one entry per item (user turn or assistant reply), updated in
// place as transcripts stream in. An interrupted reply shows the part the user heard normally
// and the unheard rest struck through.
//
// Entries are keyed by the server's item ids. `snapshot()` is what tests read.

const DEFAULT_MS_PER_CHAR = 50; // espeak-ng's default voice, measured; refined by finished replies
const LATENCY_TITLES = {
  local:
    "Latency: from the end of your speech (detected here, from the microphone level) to the first reply audio played.",
  server:
    "Latency: from the end of your speech (estimated as the server's speech_stopped arrival minus its silence duration) to the first reply audio played.",
  stop: "Latency: from pressing Stop microphone, which ended your turn, to the first reply audio played.",
};

/**
 * Split `text` into the words heard in `heardMs` and the rest. `totalMs`, when the item's
 * whole audio is known, makes the split proportional to it; otherwise `msPerChar` estimates
 * how much text the heard audio covers. Cuts between words, like the server does.
 */
export function splitHeard(text, heardMs, { totalMs = null, msPerChar = DEFAULT_MS_PER_CHAR } = {}) {
  if (!text) return { heard: "", unheard: "" };
  const chars = totalMs ? (text.length * heardMs) / totalMs : heardMs / msPerChar;
  if (chars >= text.length) return { heard: text, unheard: "" };
  let cut = 0;
  for (const match of text.matchAll(/\S+/g)) {
    const end = match.index + match[0].length;
    if (end > chars + 1) break;
    cut = end;
  }
  return { heard: text.slice(0, cut), unheard: text.slice(cut) };
}

export class Transcript {
  /**
   * @param {HTMLOListElement} list     where entries are shown
   * @param {HTMLElement} announcer     a polite live region: final utterances are read out
   */
  constructor(list, announcer) {
    this.list = list;
    this.announcer = announcer;
    this.entries = new Map();
    this.order = [];
    this.msPerChar = DEFAULT_MS_PER_CHAR;
  }

  #entry(itemId, role) {
    let entry = this.entries.get(itemId);
    if (entry) return entry;
    entry = {
      itemId,
      role,
      text: "",
      final: false,
      status: "in_progress",
      interrupted: false,
      heardMs: null,
      audioMs: 0, // reply audio received
      audioComplete: false,
      latencyMs: null,
      latencyMethod: null,
      announced: false,
      el: null,
    };
    this.entries.set(itemId, entry);
    this.order.push(entry);
    this.#mount(entry);
    return entry;
  }

  userTurn(itemId) {
    this.#render(this.#entry(itemId, "user"));
  }

  userPartial(itemId, delta) {
    const entry = this.#entry(itemId, "user");
    if (entry.final) return;
    // The protocol's deltas are increments, but some recognisers (Voxgate's pocketsphinx among
    // them) send each new whole hypothesis. A delta that starts with the same word as the text
    // so far is taken as a whole hypothesis and replaces it.
    const firstWord = (s) => s.trimStart().split(/\s+/, 1)[0];
    const isWhole = entry.text !== "" && !/^\s/.test(delta) && firstWord(delta) === firstWord(entry.text);
    entry.text = isWhole ? delta : entry.text + delta;
    this.#render(entry);
  }

  userFinal(itemId, text) {
    const entry = this.#entry(itemId, "user");
    entry.text = text;
    entry.final = true;
    entry.status = "completed";
    this.#render(entry);
    this.#announce(entry);
  }

  userText(itemId, text) {
    this.userFinal(itemId, text);
  }

  assistantItem(itemId) {
    this.#render(this.#entry(itemId, "assistant"));
  }

  assistantDelta(itemId, delta) {
    const entry = this.#entry(itemId, "assistant");
    if (entry.final) return;
    entry.text += delta;
    this.#render(entry);
  }

  assistantDone(itemId, text) {
    const entry = this.#entry(itemId, "assistant");
    if (typeof text === "string" && text.length >= entry.text.length) entry.text = text;
    entry.final = true;
    this.#render(entry);
  }

  addAudio(itemId, ms) {
    const entry = this.entries.get(itemId);
    if (entry) entry.audioMs += ms;
  }

  audioComplete(itemId) {
    const entry = this.entries.get(itemId);
    if (entry) entry.audioComplete = true;
  }

  /** The response ended: completed | cancelled | failed | incomplete. */
  responseDone(itemId, status) {
    const entry = this.entries.get(itemId);
    if (!entry) return;
    entry.status = status;
    entry.final = true;
    if (status === "cancelled") entry.interrupted = true;
    if (status === "completed" && entry.audioComplete && entry.audioMs > 0 && entry.text.length > 10) {
      // learn this voice's speaking rate for splitting later interrupted replies
      this.msPerChar = 0.5 * this.msPerChar + 0.5 * (entry.audioMs / entry.text.length);
    }
    this.#render(entry);
    if (status !== "cancelled") this.#announce(entry); // a cut reply is read once its cut is known
  }

  /** The user heard `heardMs` of the item's audio (from conversation.item.truncated). */
  truncated(itemId, heardMs) {
    const entry = this.entries.get(itemId);
    if (!entry) return;
    entry.interrupted = true;
    entry.heardMs = heardMs;
    this.#render(entry);
    this.#announce(entry);
  }

  setLatency(itemId, latencyMs, method) {
    const entry = this.entries.get(itemId);
    if (!entry) return;
    entry.latencyMs = latencyMs;
    entry.latencyMethod = method;
    this.#render(entry);
  }

  /** A line across the conversation, e.g. "Reconnected: a new session started". */
  divider(text) {
    const li = document.createElement("li");
    li.className = "divider";
    li.textContent = text;
    this.list.append(li);
    this.#scroll();
  }

  split(entry) {
    if (entry.heardMs === null) return { heard: entry.text, unheard: "" };
    // only a completed response's audio covers all of its text (a cancelled one also gets
    // output_audio.done, after just the audio made so far)
    const whole = entry.status === "completed" && entry.audioComplete;
    return splitHeard(entry.text, entry.heardMs, {
      totalMs: whole ? entry.audioMs : null,
      msPerChar: this.msPerChar,
    });
  }

  snapshot() {
    return this.order.map((e) => {
      const { heard, unheard } = this.split(e);
      return {
        itemId: e.itemId,
        role: e.role,
        text: e.text,
        heard,
        unheard,
        status: e.status,
        interrupted: e.interrupted,
        heardMs: e.heardMs,
        latencyMs: e.latencyMs,
        latencyMethod: e.latencyMethod,
      };
    });
  }

  #mount(entry) {
    const li = document.createElement("li");
    li.className = `turn ${entry.role}`;
    li.dataset.itemId = entry.itemId;
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = entry.role === "user" ? "You" : "Assistant";
    const text = document.createElement("p");
    text.className = "text";
    const meta = document.createElement("span");
    meta.className = "meta";
    li.append(who, text, meta);
    entry.el = { li, text, meta };
    this.list.append(li);
  }

  #render(entry) {
    const { li, text, meta } = entry.el;
    li.classList.toggle("pending", !entry.final);
    li.classList.toggle("interrupted", entry.interrupted);
    text.replaceChildren();
    if (entry.role === "user" && !entry.text) {
      const span = document.createElement("span");
      span.className = "placeholder";
      span.textContent = entry.final ? "(nothing recognised)" : "…";
      text.append(span);
    } else {
      const { heard, unheard } = this.split(entry);
      text.append(document.createTextNode(heard));
      if (unheard.trim()) {
        const words = unheard.trimStart();
        text.append(document.createTextNode(unheard.slice(0, unheard.length - words.length)));
        const del = document.createElement("del");
        del.className = "unheard";
        del.title = "Not heard: the reply was interrupted here";
        const hint = document.createElement("span");
        hint.className = "visually-hidden";
        hint.textContent = "(not heard:) ";
        del.append(hint, document.createTextNode(words));
        text.append(del);
      }
      if (!entry.final && entry.role === "assistant") {
        const caret = document.createElement("span");
        caret.className = "caret";
        caret.setAttribute("aria-hidden", "true");
        text.append(caret);
      }
    }
    meta.replaceChildren();
    if (entry.interrupted) {
      const tag = document.createElement("span");
      tag.className = "tag interrupted-tag";
      tag.textContent = entry.heardMs === null ? "interrupted" : `interrupted at ${(entry.heardMs / 1000).toFixed(1)} s`;
      meta.append(tag);
    } else if (entry.status === "failed" || entry.status === "incomplete") {
      const tag = document.createElement("span");
      tag.className = "tag failed-tag";
      tag.textContent = entry.status;
      meta.append(tag);
    }
    if (entry.latencyMs !== null) {
      const tag = document.createElement("span");
      tag.className = "tag latency";
      tag.textContent = `latency ${(entry.latencyMs / 1000).toFixed(2)} s`;
      tag.title = LATENCY_TITLES[entry.latencyMethod] ?? LATENCY_TITLES.server;
      meta.append(tag);
    }
    this.#scroll();
  }

  #announce(entry) {
    if (entry.announced || !this.announcer) return;
    entry.announced = true;
    const words = entry.role === "user" ? entry.text || "nothing recognised" : this.split(entry).heard;
    if (!words) return;
    const p = document.createElement("p");
    p.textContent = `${entry.role === "user" ? "You" : "Assistant"}: ${words}`;
    this.announcer.append(p);
    while (this.announcer.childElementCount > 6) this.announcer.firstElementChild.remove();
  }

  #scroll() {
    const scroller = this.list.parentElement;
    if (!scroller) return;
    const nearBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 120;
    if (nearBottom) scroller.scrollTop = scroller.scrollHeight;
  }
}
