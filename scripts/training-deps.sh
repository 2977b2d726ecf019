#!/usr/bin/env bash
# Debian packages for `xcodec-stream corpus` (training data only; the test suite does not need them):
# the espeak-ng, flite and festival synthesisers, festival voices with a text source in their language, and
# the fortune cookies and translated man pages the sentences come from. Installs only what is missing;
# needs root or sudo.
set -euo pipefail
wanted=(
  espeak-ng flite festival
  festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts festvox-italp16k festvox-itapc16k festvox-ru
  festvox-suopuhe-lj festvox-suopuhe-mv festvox-czech-dita festvox-czech-krb festvox-czech-machac
  festvox-czech-ph
  fortunes fortunes-de fortunes-it fortunes-es fortunes-ru fortunes-br fortunes-cs fortunes-pl
  manpages-fr manpages-fi manpages-nl manpages-sv manpages-hu
)
need=()
for pkg in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
[ ${#need[@]} -eq 0 ] && exit 0
CALLER=training-deps exec "$(dirname "$0")/apt-install.sh" "${need[@]}"
