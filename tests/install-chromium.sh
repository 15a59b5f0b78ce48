#!/usr/bin/env bash
# Chromium from Debian's packages for the browser test of the sweep report (`make test` calls this where
# `chromium` is not on PATH). Needs root or password-less sudo; the apt output goes to a log, shown on failure.
set -euo pipefail
command -v chromium >/dev/null && exit 0
die() { echo "install-chromium: $*" >&2; exit 1; }
command -v apt-get >/dev/null || die "chromium is missing and this is not a Debian machine (no apt-get); install chromium and put it on PATH"
if [ "$(id -u)" = 0 ]; then
  as_root=()
elif sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  die "chromium is missing; install it as root (apt-get install chromium) or run make test as root"
fi
log=${TMPDIR:-/tmp}/r2i-install-chromium.log
echo "installing chromium from Debian's packages (log: $log) ..."
export DEBIAN_FRONTEND=noninteractive
{ "${as_root[@]}" apt-get -o DPkg::Lock::Timeout=300 update \
  && "${as_root[@]}" apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends chromium; } >"$log" 2>&1 \
  || { tail -n 20 "$log" >&2; die "apt-get install chromium failed (log: $log)"; }
command -v chromium >/dev/null || die "apt-get installed chromium but it is not on PATH"
echo "chromium: $(chromium --version 2>/dev/null || echo installed)"
