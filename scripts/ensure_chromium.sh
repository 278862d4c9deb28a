#!/usr/bin/env bash
# Make sure Debian's headless-capable Chromium is at /usr/bin/chromium for the browser tests
# (tests/ui/, driven by Playwright with executable_path: Playwright never downloads a browser).
# Like ensure_redis.sh: a no-op when it is there, otherwise installed with apt.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  echo "chromium: $(/usr/bin/chromium --version 2>/dev/null || echo installed)"
  exit 0
fi
echo "chromium: not installed, installing Debian's chromium package"
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
[ -x /usr/bin/chromium ] || { echo "chromium: install failed (no /usr/bin/chromium)" >&2; exit 1; }
echo "chromium: $(/usr/bin/chromium --version 2>/dev/null || echo installed)"
