# The REST service on ONNX Runtime (CUDA when the container gets a GPU, CPU otherwise). Torch-free:
# only serving/requirements.txt is installed. See docs/serving.md.
#
#   mask-export --checkpoint runs/x/best.pt --out model.onnx          # or: make demo-model, then
#   docker build -t mask-classifier --build-arg MODEL=.demo/model.onnx .
#   docker run --gpus all -p 3000:3000 mask-classifier
#
# Without MODEL the image holds no model: mount a BentoML store that has mask-classifier instead,
#   docker run -p 3000:3000 -v ~/bentoml:/home/app/bentoml:ro mask-classifier
# (a read-only store needs BENTOML_RESULT_STORE on a writable path; the default below is one).
# onnxruntime-gpu 1.31 is built for CUDA 13 + cuDNN 9: keep the base image in step with it.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv curl ca-certificates \
 && rm -rf /var/lib/apt/lists/*

COPY serving/requirements.txt /tmp/requirements.txt
RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install -r /tmp/requirements.txt \
 && /opt/venv/bin/python -c "import onnxruntime, bentoml; print(onnxruntime.get_available_providers())"

RUN useradd --create-home --uid 10001 app
WORKDIR /app
COPY bentofile.yaml ./
COPY maskdata/ maskdata/
COPY serving/ serving/

# MODEL: an exported .onnx inside the build context; bentofile.yaml rides along so that the COPY
# stays valid when MODEL is empty.
ARG MODEL=""
COPY bentofile.yaml ${MODEL} /opt/model/
RUN rm -f /opt/model/bentofile.yaml && chown -R app /opt/model

USER app
ENV PATH=/opt/venv/bin:$PATH \
    BENTOML_HOME=/home/app/bentoml \
    BENTOML_RESULT_STORE=/home/app/task_result.db \
    BENTOML_DO_NOT_TRACK=true
EXPOSE 3000
# /readyz turns 200 only after the model is loaded and has run its warm-up inference.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD curl -fsS http://localhost:3000/readyz || exit 1
# A model baked in with MODEL wins over the store unless MASK_MODEL is set explicitly.
CMD ["sh", "-c", "m=$(ls /opt/model/*.onnx 2>/dev/null | head -n1); if [ -z \"$MASK_MODEL\" ] && [ -n \"$m\" ]; then export MASK_MODEL=\"$m\"; fi; exec bentoml serve --host 0.0.0.0 --port 3000"]
