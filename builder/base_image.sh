#!/usr/bin/env bash
# A Debian bookworm base image with Python, made locally: debootstrap builds the
# root filesystem from Debian's package mirror and `docker import` turns it into
# an image. For building the CPU variant where no registry can be pulled from:
#   bash builder/base_image.sh [TAG]
#   docker build --build-arg VARIANT=cpu --build-arg CPU_BASE_IMAGE=TAG .
# Does nothing when TAG exists. Needs root, debootstrap and a Docker engine.
set -euo pipefail
TAG=${1:-local/python3:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DOCKER=${DOCKER:-docker}

if "$DOCKER" image inspect "$TAG" >/dev/null 2>&1; then
  echo "==> $TAG exists"
  exit 0
fi
rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
echo "==> debootstrap bookworm into $rootfs ($MIRROR)"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$rootfs" "$MIRROR" >"$rootfs.log" 2>&1 || { tail -20 "$rootfs.log" >&2; exit 1; }
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
echo "==> docker import as $TAG"
tar -C "$rootfs" -c . | "$DOCKER" import - "$TAG" >/dev/null
rm -f "$rootfs.log"
echo "==> $TAG is ready"
