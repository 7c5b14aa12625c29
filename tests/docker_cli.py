"""Building images with BuildKit through a docker CLI, for the image tests.

The Dockerfile's ``RUN --mount=type=secret`` needs BuildKit, which the Docker
SDK's build does not speak (docker/docker-py#2230): builds go through a CLI,
running and inspecting through the SDK. Some machines have two CLIs: a new one
without the buildx plugin (which then refuses ``DOCKER_BUILDKIT=1``) and the
distribution's older one with BuildKit built in."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class Builder:
    cli: str
    buildx: bool

    def command(self, *args: str) -> list[str]:
        """``docker build ARGS`` as this CLI runs it with BuildKit."""
        if self.buildx:
            return [self.cli, "buildx", "build", "--load", *args]
        return [self.cli, "build", *args]

    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_BUILDKIT": "1"}


def _client_major(cli: str) -> int | None:
    result = subprocess.run([cli, "version", "--format", "{{.Client.Version}}"], capture_output=True, text=True)
    version = result.stdout.strip()
    return int(version.split(".")[0]) if version[:1].isdigit() else None


def find_builder() -> Builder | None:
    """A CLI that can build with BuildKit: one with buildx, else one older than
    Docker 23 (BuildKit built in); None when there is neither."""
    candidates = [path for path in (shutil.which("docker"), "/usr/bin/docker") if path and os.path.exists(path)]
    for cli in dict.fromkeys(candidates):
        if subprocess.run([cli, "buildx", "version"], capture_output=True).returncode == 0:
            return Builder(cli, buildx=True)
    for cli in dict.fromkeys(candidates):
        major = _client_major(cli)
        if major is not None and major < 23:
            return Builder(cli, buildx=False)
    return None


def engine_or_reason():
    """(a Docker SDK client, None), or (None, why there is no engine)."""
    try:
        import docker

        client = docker.from_env()
        client.ping()
    except Exception as error:  # noqa: BLE001 - any failure means no engine here
        return None, f"no Docker engine answers ({type(error).__name__}: {error})"
    return client, None
