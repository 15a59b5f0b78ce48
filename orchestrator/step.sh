#!/bin/bash
# r2i step wrapper: the srun task on the compute node, OUTSIDE any container.
#   step.sh FACTS_DIR COMMAND...   (COMMAND: python, or `singularity exec ... image.sif python`, + submitit args)
# - COMMAND starts with USR2/TERM ignored, and the job keeps them ignored (orchestrator/job.py StopFlag): Slurm
#   signals every process of the step, and the training loop's env workers must survive until it has committed.
# - On USR2/TERM this wrapper writes the stop request $R2I_FACTS_FILE: the signal, its time and
#   `scontrol show job` (PreemptTime, JobState: the facts the job classifies its stop from; scontrol is absent
#   inside containers). The job polls for that file, so no signal has to cross into a container, and a signal
#   that lands before Python is up is not lost.
set -u
facts_dir="$1"; shift
export R2I_FACTS_FILE="$facts_dir/facts-${SLURM_JOB_ID:-0}-${SLURM_RESTART_COUNT:-0}.txt"
rm -f "$R2I_FACTS_FILE"
R2I_JOB_END_TIME="$(squeue -h -j "${SLURM_JOB_ID:-0}" -o %e 2>/dev/null || true)"
export R2I_JOB_END_TIME
record() {
  { echo "Signal=SIG$1 SignalTime=$(date +%s)"; scontrol show job -o "${SLURM_JOB_ID:-0}" 2>&1; } \
    > "$R2I_FACTS_FILE.tmp" && mv -f "$R2I_FACTS_FILE.tmp" "$R2I_FACTS_FILE"
}
# the first signal is the request (a preemption's USR2 may be followed by TERM at the grace time's end)
trap '[ -e "$R2I_FACTS_FILE" ] || record USR2' USR2
trap '[ -e "$R2I_FACTS_FILE" ] || record TERM' TERM
( trap '' USR2 TERM; exec "$@" ) &
child=$!
while :; do
  wait "$child"; rc=$?
  kill -0 "$child" 2>/dev/null || break   # wait returned because a trap ran: keep waiting
done
exit "$rc"
