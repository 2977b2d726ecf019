#!/usr/bin/env bash
# Debian packages for the end-to-end tests: headless Chromium (browser microphone) and a user-mode
# PulseAudio with PortAudio (sounddevice loopback); for the quality evaluation, libopus and a C compiler.
# Installs only what is missing; needs root or sudo.
set -euo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v pulseaudio >/dev/null 2>&1 || need+=(pulseaudio pulseaudio-utils)
ldconfig -p 2>/dev/null | grep -q libportaudio.so.2 || need+=(libportaudio2)
# eval --quality: Opus as the reference codec (opuslib loads libopus), and a C compiler for pesq (an sdist)
ldconfig -p 2>/dev/null | grep -q libopus.so.0 || need+=(libopus0)
command -v cc >/dev/null 2>&1 || need+=(build-essential)
# cluster tests: a real Redis and nginx (the tests start their own on free ports, under a temp dir)
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || need+=(redis-server)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
[ ${#need[@]} -eq 0 ] && exit 0
CALLER=system-deps exec "$(dirname "$0")/apt-install.sh" "${need[@]}"
