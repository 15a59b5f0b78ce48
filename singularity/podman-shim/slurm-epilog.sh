#!/bin/sh
# Slurm Epilog for nodes that run jobs through the podman shim: removes the containers of the finished job.
# podman's client proxies catchable signals into the container, but when Slurm SIGKILLs a job the client dies
# and conmon keeps the container running; real singularity has no such daemon. slurm.conf: Epilog=<this file>
[ -n "${SLURM_JOB_ID:-}" ] || exit 0
command -v podman >/dev/null || exit 0
here=$(dirname "$(readlink -f "$0")")
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/../../docker/containers.conf}"
ids=$(podman ps -q --filter "label=r2i.shim.slurm_job_id=$SLURM_JOB_ID")
[ -z "$ids" ] || podman rm -f -t 0 $ids >/dev/null
exit 0
