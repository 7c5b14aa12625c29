#!/usr/bin/env bash
# CI: a Docker engine with BuildKit, and the local Debian base image the CPU
# image is built on (tests/test_image.py). Debian's docker.io brings dockerd and
# a CLI with BuildKit built in (/usr/bin/docker); no registry is needed.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "docker: not root, so no engine is started here; tests/test_image.py fails under CI=true" >&2
  exit 0
fi
docker=/usr/bin/docker
if ! "$docker" info >/dev/null 2>&1; then
  if ! pgrep -x dockerd >/dev/null; then
    echo "==> starting dockerd"
    nohup dockerd >/tmp/dockerd.log 2>&1 &
  fi
  for _ in $(seq 60); do
    "$docker" info >/dev/null 2>&1 && break
    sleep 1
  done
fi
"$docker" info >/dev/null 2>&1 || { echo "docker: dockerd did not start; its log ends:" >&2; tail -20 /tmp/dockerd.log >&2; exit 0; }
DOCKER=$docker bash builder/base_image.sh local/python3:bookworm
