// PCM16 audio as the Realtime protocol carries it: base64 of little-endian 16-bit samples,
// which is how every browser's typed arrays lay them out.

export function bufferToBase64(buffer) {
  const bytes = new Uint8Array(buffer);
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

export function base64ToBuffer(b64) {
  const binary = atob(b64);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes.buffer;
}

/** `ms` of digital silence as one base64 PCM16 payload at `rateHz`. */
export function silenceBase64(ms, rateHz) {
  return bufferToBase64(new ArrayBuffer(Math.round((rateHz * ms) / 1000) * 2));
}
