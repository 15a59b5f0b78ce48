#!/usr/bin/env bash
# Build the r2i-hpc image with podman on a machine with no registry and no Docker engine (the CI stage).
#
#   docker/build-podman.sh [--variant cpu|gpu] [--no-archive]
#
# Steps (each named in the error if it fails):
#   tools    apt-get install podman runc debootstrap catatonit if one is missing (needs root)
#   base     localhost/debian-base:bookworm from Debian's packages: debootstrap minbase with the mirror read from
#            apt's own sources, packed as a tarball cached in $R2I_CONTAINER_CACHE, then `podman import`
#   build    podman build of docker/Dockerfile, the host CA bundle as build secret `hostca`, pip cache mounted
#            from $R2I_CONTAINER_CACHE/pip (never part of a layer)
#   archive  podman save --format docker-archive -> build/r2i-hpc-<variant>.tar (what `make sif` converts)
#
# Environment: R2I_CONTAINER_CACHE (default /var/cache/r2i-containers) keeps the base tarball and the pip cache
# between runs; HOST_CA_BUNDLE (default /etc/ssl/certs/ca-certificates.crt).
set -Eeuo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=image.env
source "$here/image.env"

variant=${VARIANT:-cpu}
archive=1
while [ $# -gt 0 ]; do
  case "$1" in
    --variant) variant=${2:?--variant needs cpu or gpu}; shift 2 ;;
    --variant=*) variant=${1#*=}; shift ;;
    --no-archive) archive=0; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "build-podman.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$variant" in cpu|gpu) ;; *) echo "build-podman.sh: --variant must be cpu or gpu, got '$variant'" >&2; exit 2 ;; esac

cache=${R2I_CONTAINER_CACHE:-/var/cache/r2i-containers}
ca_bundle=${HOST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
image="$IMAGE_NAME:$variant"
archive_path="$root/$ARCHIVE_DIR/r2i-hpc-$variant.tar"
export CONTAINERS_CONF="$here/containers.conf"

step=start
trap 'echo "build-podman.sh: step \"$step\" failed (exit $?); see the output above" >&2' ERR
t0=$SECONDS
log() { printf '[build-podman %4ds] %s\n' "$((SECONDS - t0))" "$*"; }

step=tools
missing=()
for tool in podman runc debootstrap catatonit; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "build-podman.sh: missing ${missing[*]}; install them (apt-get install podman runc debootstrap catatonit)" >&2
    exit 1
  fi
  log "installing ${missing[*]} (podman runc debootstrap catatonit) with apt-get"
  apt_install() {
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q podman runc debootstrap catatonit
  }
  apt_install >/dev/null 2>&1 || { apt-get -o DPkg::Lock::Timeout=300 update -q >/dev/null && apt_install >/dev/null; }
fi

# Mirror of suite $1 from apt's own sources (deb822 first, then one-line format).
mirror_for() {
  local suite=$1 f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk -v s="$suite" 'BEGIN{RS=""} {uri=""; ok=0
        n=split($0, l, "\n"); for (i=1;i<=n;i++) {
          if (l[i] ~ /^URIs:/) { split(l[i], u, /[ \t]+/); uri=u[2] }
          if (l[i] ~ /^Suites:/) { m=split(l[i], w, /[ \t]+/); for (j=2;j<=m;j++) if (w[j]==s) ok=1 } }
        if (ok && uri != "") { print uri; exit } }' "$f"
  done | head -n1 | grep . && return 0
  awk -v s="$suite" '$1=="deb" { for (i=2;i<=NF;i++) if ($i ~ /^(https?|file):/ && $(i+1)==s) { print $i; exit } }' \
    /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | head -n1 | grep . && return 0
  return 1
}

step=base
if podman image exists "$BASE_IMAGE"; then
  log "base $BASE_IMAGE present"
else
  mirror=$(mirror_for "$DEBIAN_SUITE") || mirror=http://deb.debian.org/debian
  security=$(mirror_for "$DEBIAN_SUITE-security") || security=http://deb.debian.org/debian-security
  include=python3,python3-venv,ca-certificates
  key=$(printf '%s\n' "$DEBIAN_SUITE" "$mirror" "$security" "$include" "v1" | sha256sum | cut -c1-12)
  tarball="$cache/debian-base-$DEBIAN_SUITE-$key.tar"
  mkdir -p "$cache"
  if [ ! -s "$tarball" ]; then
    log "debootstrap $DEBIAN_SUITE from $mirror (cache miss: $tarball)"
    rootfs=$(mktemp -d "$cache/rootfs.XXXXXX")
    trap 'rm -rf "$rootfs"' EXIT
    debootstrap --variant=minbase --include="$include" "$DEBIAN_SUITE" "$rootfs" "$mirror" >"$cache/debootstrap.log" 2>&1 \
      || { echo "build-podman.sh: debootstrap failed, log: $cache/debootstrap.log" >&2; false; }
    cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $mirror $DEBIAN_SUITE main
deb $mirror $DEBIAN_SUITE-updates main
deb $security $DEBIAN_SUITE-security main
EOF
    # debootstrap copies the host's identity in; an image must not carry it.
    rm -f "$rootfs/etc/resolv.conf" "$rootfs/etc/hostname"
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
      "$rootfs"/var/log/* "$rootfs"/tmp/*
    tar -C "$rootfs" --numeric-owner -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs"; trap - EXIT
  else
    log "base tarball cached: $tarball"
  fi
  podman import "$tarball" "$BASE_IMAGE" >/dev/null
  log "imported $BASE_IMAGE"
fi

step=build
mkdir -p "$cache/pip"
secret_src=$ca_bundle
if [ ! -s "$secret_src" ]; then
  secret_src=$(mktemp); trap 'rm -f "$secret_src"' EXIT
fi
log "podman build $image (variant $variant)"
podman build --pull=never --layers \
  --build-arg BASE="$BASE_IMAGE" --build-arg VARIANT="$variant" \
  --secret id=hostca,src="$secret_src" \
  --volume "$cache/pip:/var/cache/r2i-pip" \
  --ignorefile "$here/Dockerfile.dockerignore" \
  -f "$here/Dockerfile" -t "$image" "$root"
log "built $image ($(podman image inspect --format '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}'))"

if [ "$archive" = 1 ]; then
  step=archive
  id=$(podman image inspect --format '{{.Id}}' "$image")
  if [ -s "$archive_path" ] && [ "$(cat "$archive_path.id" 2>/dev/null)" = "$id" ]; then
    log "archive up to date: $archive_path"
  else
    mkdir -p "$(dirname "$archive_path")"
    rm -f "$archive_path" "$archive_path.id"
    podman save --format docker-archive -o "$archive_path.tmp" "$image"
    mv "$archive_path.tmp" "$archive_path"
    echo "$id" >"$archive_path.id"
    log "saved $archive_path ($(du -m "$archive_path" | cut -f1) MB)"
  fi
fi
log "done"
