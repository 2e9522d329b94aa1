#!/bin/sh
# Creates the stack's databases and roles. The postgres image runs this once,
# on the first start of an empty data volume (/docker-entrypoint-initdb.d);
# later changes to .env do not reach an existing volume.
#
#   optuna       Optuna's study (trials, params, heartbeats), owned by the
#                workers' role
#   mlflow       MLflow's runs and model registry, owned by the server's role
#   mlflow_auth  MLflow basic-auth's users and permissions, owned by the
#                server's role
#
# Optuna and MLflow both keep their schema revision in a table named
# `alembic_version`, so they cannot share one database. Workers reach only
# `optuna`: the password hashes in `mlflow_auth` stay with the server.
set -eu

# psql's :"name" and :'name' quote identifiers and literals, so a password
# with quotes in it cannot break out of the statement.
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -v worker="$WORKER_DB_USER" -v worker_password="$WORKER_DB_PASSWORD" \
    -v mlflow="$MLFLOW_DB_USER" -v mlflow_password="$MLFLOW_DB_PASSWORD" <<'SQL'
CREATE ROLE :"worker" LOGIN PASSWORD :'worker_password';
CREATE ROLE :"mlflow" LOGIN PASSWORD :'mlflow_password';
CREATE DATABASE optuna OWNER :"worker";
CREATE DATABASE mlflow OWNER :"mlflow";
CREATE DATABASE mlflow_auth OWNER :"mlflow";
-- Every role may connect to every database unless told otherwise.
REVOKE CONNECT, TEMPORARY ON DATABASE optuna, mlflow, mlflow_auth FROM PUBLIC;
SQL
