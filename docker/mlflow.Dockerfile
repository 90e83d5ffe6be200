# syntax=docker/dockerfile:1
# medxp's MLflow tracking server: MLflow with basic-auth and the PostgreSQL driver, run as a non-root user.
# The build context is docker/ (see compose.yaml); mlflow.Dockerfile.dockerignore lets in only the entrypoint,
# so docker/.env never reaches the build. No secret is baked in: the entrypoint reads them from the environment.
FROM python:3.11-slim

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The same mlflow as pyproject.toml; psycopg2-binary as in medxp's `cluster` extra (a wheel: no compiler needed).
RUN pip install --no-cache-dir "mlflow[auth]==3.17.2" "psycopg2-binary==2.9.13"

# /artifacts exists in the image, owned by the server's user, so a new named volume mounted there inherits that owner.
RUN groupadd --system --gid 10001 mlflow \
    && useradd --system --uid 10001 --gid mlflow --home-dir /home/mlflow --create-home mlflow \
    && mkdir -p /artifacts \
    && chown mlflow:mlflow /artifacts

COPY --chmod=0555 mlflow_entrypoint.py /usr/local/bin/medxp-mlflow-entrypoint

USER 10001:10001
WORKDIR /home/mlflow
EXPOSE 5000
VOLUME ["/artifacts"]
ENTRYPOINT ["python", "/usr/local/bin/medxp-mlflow-entrypoint"]
