#!/usr/bin/env bash
# The README's second command (and what .ci/run runs): sets up what the tests need, then runs every
# test of the workspace. Needs a Rust toolchain and a C compiler; the browser tests of the web page
# need Debian's Chromium and Firefox ESR, the load-balancer test Debian's HAProxy, and the libopus
# build (the one we ship) CMake, installed here when missing (as root, or through sudo).
#
# The tests build in the release profile, so they reuse what the README's first command
# (`cargo run --release …`) already compiled instead of building every dependency a second time.
# MOSHI_SKIP_BROWSER_TEST=1 skips the browser tests where the browsers cannot be installed,
# MOSHI_SKIP_HAPROXY_TEST=1 the HAProxy test where haproxy cannot be.
set -euo pipefail
cd "$(dirname "$0")/.."

# The browser tests drive the web page in Debian's Chromium (/usr/bin/chromium) and Firefox ESR.
# Firefox comes with its recommended packages (FFmpeg's libavcodec among them, which its media
# stack may use); Chromium does not need its own. The load-balancer test
# (crates/cli/tests/haproxy_routing.rs) routes conversations through Debian's HAProxy.
missing=()
if [ "${MOSHI_SKIP_BROWSER_TEST:-0}" != 1 ]; then
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  command -v firefox-esr >/dev/null 2>&1 || command -v firefox >/dev/null 2>&1 || missing+=(firefox-esr)
fi
if [ "${MOSHI_SKIP_HAPROXY_TEST:-0}" != 1 ]; then
  command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
fi
# The tests run the build we ship: Opus input decoded by libopus (feature `libopus`), which
# opusic-sys builds from source with CMake.
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else SUDO=none; fi
  if [ "$SUDO" = none ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "tools/test.sh: the tests need ${missing[*]}, which cannot be installed here" >&2
    echo "  (no apt-get, or neither root nor sudo). Install them, or set MOSHI_SKIP_BROWSER_TEST=1 (browsers)" >&2
    echo "  or MOSHI_SKIP_HAPROXY_TEST=1 (haproxy) to skip those tests; CMake (for libopus) has no skip." >&2
    exit 2
  fi
  echo "tools/test.sh: installing ${missing[*]} for the browser and load-balancer tests" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  for pkg in "${missing[@]}"; do
    case $pkg in
      chromium) $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null ;;
      haproxy) $SUDO apt-get install -y -qq --no-install-recommends haproxy >/dev/null ;;
      cmake) $SUDO apt-get install -y -qq --no-install-recommends cmake >/dev/null ;;
      *) $SUDO apt-get install -y -qq "$pkg" >/dev/null ;;
    esac
  done
fi

cargo test --workspace --locked --release --features moshi-rs/libopus
