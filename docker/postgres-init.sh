#!/bin/sh
# Run once by the postgres image on an empty data volume (/docker-entrypoint-initdb.d): besides POSTGRES_DB
# (`mlflow`, MLflow's tracking store) it creates MLflow's user store and the Optuna study's database, owned
# by POSTGRES_USER. Separate databases: MLflow's and Optuna's schema migrations both keep an `alembic_version`
# table, so they cannot share one.
set -eu
for database in mlflow_auth optuna; do
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
        -c "CREATE DATABASE \"$database\" OWNER \"$POSTGRES_USER\""
done
