# syntax=docker/dockerfile:1
# Serves one registered medxp model over HTTP with MLflow's scoring server: `mlflow models serve -m $MODEL_URI
# --env-manager local -h 0.0.0.0 -p 8080`, in this image's environment (no per-model virtualenv is built).
# CPU torch/torchvision at pyproject.toml's pins, then medxp from this repository as the worker image installs it
# (editable, with its `cluster` extra: the PostgreSQL driver and MLflow's basic-auth client), so the models' loader
# `medxp.serving` and its decoders (pillow, pydicom) are here. The build context is the repository root;
# serve.Dockerfile.dockerignore keeps the virtualenv, local stores, data and docker/.env out of it.
#
#   docker build -f docker/serve.Dockerfile -t medxp-serve .
#   docker run --rm -p 127.0.0.1:8080:8080 -e MLFLOW_TRACKING_URI=http://<tracking host>:5000 \
#       -e MODEL_URI=models:/glaucoma-classifier@champion medxp-serve
FROM python:3.11-slim

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLBACKEND=Agg \
    MLFLOW_DEFAULT_PREDICTION_DEVICE=cpu

# torch and torchvision first, in a layer of their own: CPU wheels (no CUDA libraries), at the project's pins.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.14.1 torchvision==0.29.1

RUN groupadd --system --gid 10001 medxp \
    && useradd --system --uid 10001 --gid medxp --home-dir /home/medxp --create-home medxp

# COPY with --chown creates the folder owned by the server's user, so the editable install below can write there.
COPY --chown=10001:10001 . /home/medxp/medxp
WORKDIR /home/medxp/medxp

# Editable, as in worker.Dockerfile; the import check fails the build if the loader or a decoder is missing.
RUN pip install --no-cache-dir -e ".[cluster]" \
    && python -c "import medxp.serving, pydicom, torch, torchvision; \
assert torch.__version__.split('+')[0] == '2.14.1', torch.__version__; \
assert torchvision.__version__.split('+')[0] == '0.29.1', torchvision.__version__"

USER 10001:10001
# The scoring server's port; publish it on loopback (-p 127.0.0.1:8080:8080) unless a proxy sits in front.
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/ping', timeout=4)"]
# MODEL_URI (models:/<name>@champion, models:/<name>/<version>, models:/m-...) and MLFLOW_TRACKING_URI come from
# `docker run -e`; with the tracking server's basic-auth, MLFLOW_TRACKING_USERNAME / _PASSWORD as well.
CMD ["bash", "-c", "exec mlflow models serve -m \"${MODEL_URI:?set MODEL_URI, e.g. models:/glaucoma-classifier@champion}\" --env-manager local -h 0.0.0.0 -p 8080"]
