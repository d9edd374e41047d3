#!/usr/bin/env bash
# Debian packages the tests and benchmarks use (recorded speech, a second TTS voice, sox).
# Installs only what is missing, and only where apt-get can run as root; otherwise says so.
set -uo pipefail
need=()
[ -d /usr/share/pocketsphinx/model ] || [ -n "$(ls /usr/share/pocketsphinx* 2>/dev/null)" ] || true
dpkg -s pocketsphinx-testdata >/dev/null 2>&1 || need+=(pocketsphinx-testdata)
dpkg -s flite >/dev/null 2>&1 || need+=(flite)
dpkg -s sox >/dev/null 2>&1 || need+=(sox)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "note: missing Debian packages ${need[*]} (tests that need them will skip)" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
  || echo "note: could not install ${need[*]} (tests that need them will skip)" >&2
exit 0
