#!/usr/bin/env bash
# The README's second command (and what .ci/run runs): sets up what the tests need, then runs every
# test of the workspace. Needs a Rust toolchain and a C compiler; the browser test of the web page
# needs Debian's Chromium, installed here when missing (as root, or through sudo).
#
# The tests build in the release profile, so they reuse what the README's first command
# (`cargo run --release …`) already compiled instead of building every dependency a second time.
# MOSHI_SKIP_BROWSER_TEST=1 skips the browser test where no Chromium can be installed.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${MOSHI_SKIP_BROWSER_TEST:-0}" != 1 ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else SUDO=none; fi
  if [ "$SUDO" = none ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "tools/test.sh: the browser test needs Chromium at /usr/bin/chromium, and it cannot be installed here" >&2
    echo "  (no apt-get, or neither root nor sudo). Install chromium, or set MOSHI_SKIP_BROWSER_TEST=1 to skip that one test." >&2
    exit 2
  fi
  echo "tools/test.sh: installing Debian's chromium for the browser test" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi

cargo test --workspace --locked --release
