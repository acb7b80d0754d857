#!/usr/bin/env bash
# A local Debian bookworm base image for deploy/Containerfile, for hosts that reach Debian's
# packages but no container registry (docs/containers.md, "Without a registry").
#
#   bash scripts/container-base.sh [IMAGE]      # default localhost/debian-min:bookworm
#
# Needs podman, runc and debootstrap (apt-get install podman runc debootstrap) and root for
# debootstrap. Does nothing if IMAGE exists. Bookworm's python3 is 3.11, as the project needs;
# deploy/Containerfile installs it (and tini) with apt when the base has no Python.
set -euo pipefail
image=${1:-localhost/debian-min:bookworm}
root=$(cd "$(dirname "$0")/.." && pwd)
export CONTAINERS_CONF=${CONTAINERS_CONF:-$root/deploy/containers.conf}
for tool in podman runc debootstrap; do
  command -v "$tool" >/dev/null || { echo "container-base.sh: $tool not found;" \
    "run: apt-get install podman runc debootstrap" >&2; exit 1; }
done
if podman image exists "$image"; then
  echo "$image is already there"; exit 0
fi
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
debootstrap --variant=minbase bookworm "$dir" "$mirror" >"$dir.log" 2>&1 ||
  { tail -20 "$dir.log" >&2; rm -f "$dir.log"; exit 1; }
rm -f "$dir.log"
rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
cat >"$dir/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb ${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security} bookworm-security main
SOURCES
tar -C "$dir" -c . | podman import --message "debootstrap --variant=minbase bookworm" - "$image"
echo "$image built from $mirror"
