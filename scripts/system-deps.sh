#!/usr/bin/env bash
# Debian packages the tests and benchmarks use: recorded human speech (pocketsphinx-testdata),
# voices to make test speech (flite, espeak-ng), sox, the browsers and fonts the web-client
# tests drive, and the real servers the scale-out tests start on ports of their own
# (redis-server, nginx). Idempotent: installs only what is missing, and only as root where
# apt-get exists; otherwise it says so and the tests that need a package skip with a reason.
# The packages' own services are not started (policy-rc.d): the tests start their own.
set -uo pipefail
need=()
for pkg in pocketsphinx-testdata flite espeak-ng sox chromium chromium-driver fonts-liberation firefox-esr \
  redis-server nginx-light; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "note: missing Debian packages ${need[*]} (tests that need them will skip)" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
policy=/usr/sbin/policy-rc.d
own_policy=false
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && own_policy=true
fi
apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
  || echo "note: could not install ${need[*]} (tests that need them will skip)" >&2
[ "$own_policy" = true ] && rm -f "$policy"
exit 0
