#!/usr/bin/env bash
# Stop the dev cluster's daemons (only those this project started, found by their pid files), newest first.
# State and logs stay in LOCAL_SLURM_DIR, so a later up.sh resumes; LOCAL_SLURM_CLEAN=1 on up.sh wipes them.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=common.sh
source "$here/common.sh"

if alive "$BASE/run/slurmctld.pid" && command -v scancel >/dev/null; then
  step "cancelling leftover jobs"
  scancel --full --quiet $(squeue -h -o %i 2>/dev/null) 2>/dev/null || true
  # Jobs hold slurmstepd children; give them KillWait to go before slurmd stops.
  end=$((SECONDS + 20))
  while [ -n "$(squeue -h -o %i 2>/dev/null)" ] && [ "$SECONDS" -lt "$end" ]; do sleep 0.5; done
fi

stop() {  # name, pid file
  local pidf="$2" pid end
  alive "$pidf" || { rm -f "$pidf"; return 0; }
  pid="$(cat "$pidf")"
  step "stopping $1 (pid $pid)"
  kill -TERM "$pid" 2>/dev/null
  end=$((SECONDS + 20))
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$SECONDS" -ge "$end" ]; then echo "[dev-cluster] $1 ignored SIGTERM for 20s; killing it" >&2; kill -KILL "$pid"; fi
    sleep 0.2
  done
  rm -f "$pidf"
}

stop slurmd "$BASE/run/slurmd.pid"
stop slurmctld "$BASE/run/slurmctld.pid"
stop slurmdbd "$BASE/run/slurmdbd.pid"
stop mariadbd "$BASE/mysqld-run/mysqld.pid"
stop munged "$BASE/munge/munged.pid"
echo "dev cluster down (state and logs kept in $BASE)"
