#!/usr/bin/env bash
# Creates or reuses .venv in the repository root; installs the package with the server extra (the codec and
# the daemon; the base install is the client only), and the test extra too with "test".
# Idempotent: a stamp keyed on pyproject.toml skips pip when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
py="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv" >&2
  "$py" -m venv .venv
fi
# system packages first: the test extras build pesq from source (a C compiler)
if [ "$extra" = "test" ]; then
  scripts/system-deps.sh || echo "bootstrap: system audio/browser packages unavailable; those tests will skip with a reason" >&2
fi
extras="server${extra:+,$extra}"
want="$(sha256sum pyproject.toml | cut -c1-16)-$extras"
stamp=.venv/.xcodec-stream-installed
have="$(cat "$stamp" 2>/dev/null || true)"
if ! grep -qx -- "$want" <<<"$have" 2>/dev/null; then
  echo "bootstrap: installing xcodec-stream[$extras] into .venv (first run downloads torch; minutes)" >&2
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[$extras]"
  printf '%s\n%s\n' "$have" "$want" | grep -v '^$' > "$stamp"
fi
