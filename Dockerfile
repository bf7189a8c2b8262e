# The REST service on ONNX Runtime (CUDA when the container gets a GPU, CPU otherwise). Torch-free:
# only the hashed lock serving/requirements.lock.txt is installed. See docs/image.md.
#
#   docker build -t mask-classifier --build-arg MODEL=demo/model.onnx .   # the shipped demo model
#   docker build -t mask-classifier --build-arg MODEL=model.onnx .        # yours (mask-export --out model.onnx)
#   docker run --gpus all -p 3000:3000 -v mask-state:/var/lib/mask-classifier mask-classifier
#
# Without MODEL the image holds no model: mount a BentoML store that has mask-classifier instead,
#   docker run -p 3000:3000 --user "$(id -u):$(id -g)" -v ~/bentoml:/home/app/bentoml:ro mask-classifier
# (--user: BentoML writes its store folders 0700, so only their owner can read them).
#
# Behind a proxy that re-signs HTTPS, or with a private index, hand pip its CA or its config as build
# secrets; neither ever lands in a layer:
#   docker build --secret id=ca,src=/path/to/ca.pem --secret id=pipconf,src=$HOME/.config/pip/pip.conf ...
#
# onnxruntime-gpu 1.31 (pinned in the lock) is built for CUDA 13 + cuDNN 9: the base below must stay on
# CUDA 13 (tests/test_image_config.py holds the two in step). PYTHON_VERSION is the base's Python.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

# MODEL: an exported .onnx anywhere in the build context, picked in a throwaway stage that leaves only
# /out/model.onnx (or an empty /out without MODEL). The context is copied, not bind-mounted: COPY's
# cache key is the content it copies, so a retrained model at the same path is never served stale
# from a cached layer (a bind mount's contents are not part of the key).
FROM ${CUDA_IMAGE} AS model
ARG MODEL=""
COPY . /context/
RUN set -eu; mkdir /out; \
    if [ -n "$MODEL" ]; then \
      case "/$MODEL/" in //*|*/../*) echo "MODEL=$MODEL must be a path inside the build context" >&2; exit 1;; esac; \
      if [ ! -f "/context/$MODEL" ]; then \
        echo "MODEL=$MODEL is not a file in the build context (is it listed in .dockerignore?)" >&2; exit 1; \
      fi; \
      install -m 0644 "/context/$MODEL" /out/model.onnx; \
    fi

FROM ${CUDA_IMAGE}
ARG PYTHON_VERSION=3.12
ARG DEBIAN_FRONTEND=noninteractive

RUN apt-get update \
 && apt-get install -y --no-install-recommends "python${PYTHON_VERSION}" "python${PYTHON_VERSION}-venv" \
        curl ca-certificates \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb /var/log/apt /var/log/dpkg.log

# The lock is bind-mounted, not copied: nothing of the install step is left in the image but the venv.
RUN --mount=type=bind,source=serving/requirements.lock.txt,target=/run/mask-build/requirements.lock.txt \
    --mount=type=secret,id=ca \
    --mount=type=secret,id=pipconf \
    set -eu; \
    if [ -f /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    if [ -f /run/secrets/pipconf ]; then export PIP_CONFIG_FILE=/run/secrets/pipconf; fi; \
    "python${PYTHON_VERSION}" -m venv /opt/venv; \
    /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --require-hashes \
        -r /run/mask-build/requirements.lock.txt; \
    BENTOML_HOME=/run/mask-build/bentoml BENTOML_DO_NOT_TRACK=true /opt/venv/bin/python -c \
        "import onnxruntime, bentoml; print('onnxruntime', onnxruntime.__version__, onnxruntime.get_available_providers())"; \
    rm -rf /root/.cache /run/mask-build/bentoml; find /tmp -mindepth 1 -delete

RUN useradd --create-home --uid 10001 app \
 && install -d -m 1777 /var/lib/mask-classifier
WORKDIR /app
COPY maskdata/ maskdata/
COPY serving/ serving/
COPY bentofile.yaml ./

# Last, so a new model rebuilds only this layer.
COPY --from=model /out/ /opt/model/

USER app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    BENTOML_HOME=/home/app/bentoml \
    BENTOML_DO_NOT_TRACK=true \
    MASK_TASKS_DIR=/var/lib/mask-classifier/tasks \
    BENTOML_RESULT_STORE=/var/lib/mask-classifier/task_result.db
# /submission tasks (uploads, status, journal, results) live here: on a volume they outlive the
# container, and a new container on the same volume finishes what the old one was running.
VOLUME /var/lib/mask-classifier
EXPOSE 3000
# /readyz turns 200 only after the model is loaded and has run its warm-up inference.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD curl -fsS http://localhost:3000/readyz || exit 1
# A model baked in with MODEL wins over the store unless MASK_MODEL is set explicitly.
CMD ["sh", "-c", "if [ -z \"$MASK_MODEL\" ] && [ -f /opt/model/model.onnx ]; then export MASK_MODEL=/opt/model/model.onnx; fi; exec bentoml serve --host 0.0.0.0 --port 3000"]
