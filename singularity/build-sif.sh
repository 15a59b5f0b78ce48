#!/usr/bin/env bash
# `make sif`: build/r2i-hpc-<variant>.sif from the docker archive that `make docker` writes.
#   singularity/build-sif.sh [--variant cpu|gpu]
# Needs a real apptainer or singularity (>= Apptainer 1.2 / SingularityCE 4.0 for the def file's build argument).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=../docker/image.env
source "$root/docker/image.env"

variant=cpu
case "${1:-}" in
  --variant) variant=${2:?--variant needs cpu or gpu} ;;
  --variant=*) variant=${1#*=} ;;
  "") ;;
  *) echo "build-sif.sh: unknown argument '$1' (usage: singularity/build-sif.sh [--variant cpu|gpu])" >&2; exit 2 ;;
esac
case "$variant" in cpu|gpu) ;; *) echo "build-sif.sh: --variant must be cpu or gpu, got '$variant'" >&2; exit 2 ;; esac
dir=${R2I_ARCHIVE_DIR:-$ARCHIVE_DIR}  # relative to the repository root
archive="$dir/r2i-hpc-$variant.tar"
sif="$dir/r2i-hpc-$variant.sif"

runtime=""
for cand in apptainer singularity; do
  path=$(command -v "$cand" || true)
  # skip the podman test double (singularity/podman-shim), which cannot build images
  if [ -n "$path" ] && ! "$path" --version 2>/dev/null | grep -q podman-shim; then runtime=$path; break; fi
done
if [ -z "$runtime" ]; then
  echo "make sif: neither apptainer nor singularity is installed (they cannot be installed on the project" \
       "machines). Copy $archive and singularity/r2i.def to a machine that has one and run there:" \
       "singularity build --build-arg archive=r2i-hpc-$variant.tar r2i-hpc-$variant.sif r2i.def" >&2
  exit 2
fi
cd "$root"
if [ ! -s "$archive" ]; then
  echo "make sif: $archive not found; run \`make docker IMAGE_VARIANT=$variant\` first (or copy it here)" >&2
  exit 2
fi
"$runtime" build --force --build-arg "archive=$archive" "$sif" singularity/r2i.def
echo "built $sif"
