# Shared helpers of up.sh / down.sh (sourced, not run).
BASE="${LOCAL_SLURM_DIR:-/var/tmp/r2i-dev-slurm}"
APT_LOG="$BASE.apt.log"
CURRENT_STEP=""

step() { CURRENT_STEP="$1"; echo "[dev-cluster] $1"; }

die() { echo "[dev-cluster] ERROR${CURRENT_STEP:+ ($CURRENT_STEP)}: $*" >&2; exit 1; }

fail_with_log() {  # message, log file
  echo "[dev-cluster] --- last lines of $2 ---" >&2
  tail -n 15 "$2" >&2 2>/dev/null || echo "(no log at $2)" >&2
  die "$1 (log: $2)"
}

have_all() { local c; for c in "$@"; do command -v "$c" >/dev/null || return 1; done; }

alive() {  # pid file -> 0 if it names a live process
  [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

port_free() {  # port, name of the setting that moves it
  if port_open "$1"; then die "port $1 is already in use; stop what holds it or set $2"; fi
}

wait_for() {  # what, seconds, command...
  local what="$1" secs="$2"; shift 2
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$end" ]; then echo "[dev-cluster] timed out after ${secs}s waiting for $what" >&2; return 1; fi
    sleep 0.3
  done
}
