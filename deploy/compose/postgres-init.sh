#!/bin/sh
# Runs once, when the postgres-data volume is initialised, after
# config/vault/bootstrap.sql (the postgres image runs /docker-entrypoint-initdb.d/
# in name order, as the superuser, over the local socket).
#
# bootstrap.sql creates the roles and cannot know the demo's secrets; this
# gives them passwords from the compose secrets:
# - vault_admin: the role Vault's database secrets engine logs in as;
# - postgres_exporter: a monitoring role (pg_monitor) for postgres-exporter.
# Passwords are read by psql itself (backticks), so they appear in no process
# argument, and the session does not log its statements.
#
# Environment: POSTGRES_USER (set by the image); SECRETS_DIR (default
# /run/secrets); the usual PG* variables when not run by the image.
#
# The image sources a script that is not executable: keep `set -eu` inside a
# subshell so that it cannot change the entrypoint's own shell.
set_passwords() (
    set -eu
    psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname postgres \
        --set secrets_dir="${SECRETS_DIR:-/run/secrets}" <<'SQL'
SET log_statement = 'none';
SET log_min_error_statement = 'panic';
\set vault_admin_password `cat :'secrets_dir'/vault_admin_password`
\set exporter_password `cat :'secrets_dir'/postgres_exporter_password`
ALTER ROLE vault_admin WITH LOGIN PASSWORD :'vault_admin_password';
CREATE ROLE postgres_exporter WITH LOGIN PASSWORD :'exporter_password' IN ROLE pg_monitor;
SQL
)

if ! set_passwords; then
    echo "postgres-init: could not set the passwords (does bootstrap.sql create vault_admin?)" >&2
    exit 1
fi
echo "postgres-init: passwords set for vault_admin and postgres_exporter"
