// The access key or client secret this page connects with, when the server asks for one
// (docs/security.md). It arrives as ?client_secret=ek_... in the page's URL (a backend minted it
// with POST /v1/realtime/client_secrets) or is pasted in Settings → Access key; the connection
// offers it as the "openai-insecure-api-key.<token>" websocket subprotocol.
//
// It is kept in sessionStorage (this tab only) and taken out of the address bar, so it is not
// bookmarked, shared or sent on as a Referer.

const STORAGE_KEY = "voxgate.access";

export function loadAccessToken() {
  try {
    return sessionStorage.getItem(STORAGE_KEY) || null;
  } catch {
    return null;
  }
}

export function saveAccessToken(token) {
  try {
    if (token) sessionStorage.setItem(STORAGE_KEY, token);
    else sessionStorage.removeItem(STORAGE_KEY);
  } catch {
    // storage disabled: the token lasts for this page only
  }
}

/** The token from ?client_secret= (which is then removed from the address bar), else the one
 * kept for this tab, else null. */
export function takeAccessToken(location = window.location, history = window.history) {
  const url = new URL(location.href);
  const fromUrl = url.searchParams.get("client_secret");
  if (fromUrl) {
    saveAccessToken(fromUrl);
    url.searchParams.delete("client_secret");
    history.replaceState(history.state, "", url.toString());
    return fromUrl;
  }
  return loadAccessToken();
}

/** /healthz beside the page (also when Voxgate is mounted under a prefix). */
export function healthUrl(location) {
  const path = location.pathname || "/";
  return `${location.protocol}//${location.host}${path.slice(0, path.lastIndexOf("/") + 1)}healthz`;
}

/**
 * Why the websocket was refused, when the server is up and asks for a key; null when it does not
 * (then the server is unreachable, or down, and retrying makes sense).
 */
export async function refusalReason(location, token) {
  let health;
  try {
    const response = await fetch(healthUrl(location), { cache: "no-store" });
    if (!response.ok) return null;
    health = await response.json();
  } catch {
    return null;
  }
  if (!health?.auth_required) return null;
  return token
    ? "The server refused this page's access key or client secret (wrong, or expired). Paste a valid key in Settings → Access key, or open the page with a fresh ?client_secret=…"
    : "This server needs an access key: open the page with ?client_secret=ek_… (minted by your backend), or paste an API key in Settings → Access key.";
}
