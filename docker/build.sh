#!/usr/bin/env bash
# `make docker`: build the r2i-hpc image and write build/r2i-hpc-<variant>.tar (a docker archive for `make sif`).
#   docker/build.sh [--variant cpu|gpu] [--no-archive]
# Uses a Docker engine where one answers (BuildKit, base from the registry: debian:bookworm-slim), else podman
# via docker/build-podman.sh (no engine, no registry: the project machines).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=image.env
source "$here/image.env"

variant=cpu archive=1 args=("$@")
while [ $# -gt 0 ]; do
  case "$1" in
    --variant) variant=${2:?--variant needs cpu or gpu}; shift 2 ;;
    --variant=*) variant=${1#*=}; shift ;;
    --no-archive) archive=0; shift ;;
    *) echo "build.sh: unknown argument '$1' (usage: docker/build.sh [--variant cpu|gpu] [--no-archive])" >&2; exit 2 ;;
  esac
done
case "$variant" in cpu|gpu) ;; *) echo "build.sh: --variant must be cpu or gpu, got '$variant'" >&2; exit 2 ;; esac

# podman-docker's `docker` is podman without our runtime settings: treat it as no engine.
if command -v docker >/dev/null && ! docker --version 2>/dev/null | grep -qi podman && docker info >/dev/null 2>&1; then
  image="$IMAGE_NAME:$variant"
  ca=${HOST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
  secret=()
  [ -s "$ca" ] && secret=(--secret "id=hostca,src=$ca")
  DOCKER_BUILDKIT=1 docker build --build-arg VARIANT="$variant" "${secret[@]}" \
    -f "$here/Dockerfile" -t "$image" "$root"
  if [ "$archive" = 1 ]; then
    mkdir -p "$root/$ARCHIVE_DIR"
    docker save -o "$root/$ARCHIVE_DIR/r2i-hpc-$variant.tar" "$image"
    echo "saved $ARCHIVE_DIR/r2i-hpc-$variant.tar"
  fi
else
  exec bash "$here/build-podman.sh" "${args[@]}"
fi
