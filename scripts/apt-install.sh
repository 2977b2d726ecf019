#!/usr/bin/env bash
# Installs the given Debian packages (the callers pass only the missing ones): apt-get update once, then
# install without recommends; as root, or through sudo. Shared by system-deps.sh and training-deps.sh.
set -euo pipefail
[ $# -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
echo "$(basename "${CALLER:-apt-install}"): installing $*" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
