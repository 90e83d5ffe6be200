"""Entrypoint of medxp's tracking-server image: `mlflow server` on PostgreSQL with proxied artifacts and basic-auth.

Every setting and secret comes from the container's environment at start; the image holds none.
The PostgreSQL password travels only as `PGPASSWORD`, which libpq (under psycopg2) reads itself, so
neither the backend-store URI on the command line nor the basic-auth ini written here contains it.

Environment:
    POSTGRES_USER: the database role (required).
    PGPASSWORD: its password (required).
    POSTGRES_HOST, POSTGRES_PORT: where PostgreSQL listens (default `postgres`, `5432`).
    MLFLOW_DATABASE, MLFLOW_AUTH_DATABASE: the tracking store's and the user store's databases
        (default `mlflow`, `mlflow_auth`).
    MLFLOW_AUTH_ADMIN_USERNAME, MLFLOW_AUTH_ADMIN_PASSWORD: the admin user MLflow creates in an empty
        user store (required; MLflow itself reads them).
    MLFLOW_FLASK_SERVER_SECRET_KEY: the basic-auth app's session key (required; MLflow reads it).
    MLFLOW_AUTH_DEFAULT_PERMISSION: what users get on resources they were granted nothing on (default READ).
    MLFLOW_AUTH_CONFIG_PATH: where to write the basic-auth ini (default /tmp/medxp-mlflow/basic_auth.ini).

Arguments after the image name are passed on to `mlflow server` (e.g. `--workers 4`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import quote

REQUIRED = ("POSTGRES_USER", "PGPASSWORD", "MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD",
            "MLFLOW_FLASK_SERVER_SECRET_KEY")
PERMISSIONS = ("READ", "USE", "EDIT", "MANAGE", "DENY", "NO_PERMISSIONS")  # mlflow.server.auth.permissions
DEFAULT_AUTH_CONFIG = "/tmp/medxp-mlflow/basic_auth.ini"


def missing_settings(env: dict[str, str]) -> list[str]:
    """The required variables that are unset or empty in `env`."""
    return [name for name in REQUIRED if not env.get(name)]


def database_uri(env: dict[str, str], database: str) -> str:
    """SQLAlchemy URL of one database, without a password (libpq takes it from `PGPASSWORD`)."""
    user = quote(env["POSTGRES_USER"], safe="")
    host = env.get("POSTGRES_HOST") or "postgres"
    port = env.get("POSTGRES_PORT") or "5432"
    return f"postgresql+psycopg2://{user}@{host}:{port}/{quote(database, safe='')}"


def auth_config(env: dict[str, str]) -> str:
    """The basic-auth ini (MLflow's `basic_auth.ini` keys) with the user store in PostgreSQL."""
    permission = env.get("MLFLOW_AUTH_DEFAULT_PERMISSION") or "READ"
    if permission not in PERMISSIONS:
        raise ValueError(f"MLFLOW_AUTH_DEFAULT_PERMISSION={permission!r}: expected one of {', '.join(PERMISSIONS)}")
    uri = database_uri(env, env.get("MLFLOW_AUTH_DATABASE") or "mlflow_auth")
    # configparser interpolates '%': a percent-encoded role name must reach MLflow unchanged.
    return ("[mlflow]\n"
            f"default_permission = {permission}\n"
            f"database_uri = {uri.replace('%', '%%')}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            # Every request's password check is a PBKDF2 hash: cached for a minute, it stops taking most
            # of the server's CPU under a search's stream of metric calls (a changed password waits that long).
            f"auth_cache_ttl_seconds = {int(env.get('MLFLOW_AUTH_CACHE_TTL_SECONDS') or 60)}\n")


def server_command(env: dict[str, str], extra: list[str]) -> list[str]:
    """`mlflow server` with the PostgreSQL tracking store, proxied artifacts in /artifacts and basic-auth."""
    return ["mlflow", "server",
            "--backend-store-uri", database_uri(env, env.get("MLFLOW_DATABASE") or "mlflow"),
            "--serve-artifacts", "--artifacts-destination", "/artifacts",
            "--app-name", "basic-auth",
            "--host", "0.0.0.0", "--port", "5000",
            *extra]


def main(argv: list[str] | None = None) -> None:
    """Writes the basic-auth ini from the environment, then replaces this process with `mlflow server`."""
    env = dict(os.environ)
    missing = missing_settings(env)
    if missing:
        sys.exit(f"medxp tracking server: set {', '.join(missing)} (docker/.env; see docker/.env.example)")
    try:
        config_text = auth_config(env)
    except ValueError as error:
        sys.exit(f"medxp tracking server: {error}")
    config_path = Path(env.get("MLFLOW_AUTH_CONFIG_PATH") or DEFAULT_AUTH_CONFIG)
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(config_text)
    env["MLFLOW_AUTH_CONFIG_PATH"] = str(config_path)
    command = server_command(env, list(sys.argv[1:] if argv is None else argv))
    os.execvpe(command[0], command, env)


if __name__ == "__main__":
    main()
