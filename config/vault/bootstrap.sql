-- pgwarden + Vault: the PostgreSQL side, run once by a DBA (safe to run again).
--
--   VAULT_ADMIN_VERIFIER="$(pgwarden scram-verifier --password-stdin < vault_admin_password)" \
--     psql -X -v ON_ERROR_STOP=1 "host=db.internal user=postgres dbname=postgres sslmode=verify-full sslrootcert=ca.crt" \
--       -f bootstrap.sql
--
-- Optional psql variable: -v dbname=keycloak (the default).
-- VAULT_ADMIN_VERIFIER is a SCRAM-SHA-256 verifier, not the password: the server
-- never sees the password itself. Without it, vault_admin keeps its current
-- password (none on the first run: set one with \password vault_admin).
--
-- What it creates (no superuser anywhere):
--   keycloak_owner  NOLOGIN; owns the database, its public schema and every
--                   object Keycloak's migrations create.
--   keycloak_app    NOLOGIN; SELECT/INSERT/UPDATE/DELETE on the tables and
--                   USAGE/SELECT/UPDATE on the sequences, now and later; no
--                   CREATE, no TRUNCATE, owns nothing.
--   keycloak_backup NOLOGIN; member of pg_read_all_data (PostgreSQL 14+): reads
--                   every table for `pgwarden backup` (pg_dump), writes nothing.
--   vault_admin     LOGIN CREATEROLE; the account Vault's database secrets
--                   engine uses to create, renew and drop the dynamic roles.
-- The dynamic roles Vault creates (creation-*.sql) are NOINHERIT
-- members of one of the two NOLOGIN roles and act as it for the whole session.
-- Requires PostgreSQL 15 or later and psql 15 or later (\getenv).

\set ON_ERROR_STOP on
\if :{?dbname}
\else
\set dbname keycloak
\endif
\getenv vault_admin_verifier VAULT_ADMIN_VERIFIER

SELECT current_setting('server_version_num')::int >= 160000 AS pg16_or_later \gset

-- 1. The roles. Attributes are set on every run, so a re-run repairs drift.
SELECT 'CREATE ROLE keycloak_owner'
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'keycloak_owner') \gexec
SELECT 'CREATE ROLE keycloak_app'
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'keycloak_app') \gexec
SELECT 'CREATE ROLE keycloak_backup'
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'keycloak_backup') \gexec
SELECT 'CREATE ROLE vault_admin'
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'vault_admin') \gexec

ALTER ROLE keycloak_owner NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
ALTER ROLE keycloak_app NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
ALTER ROLE keycloak_backup NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
-- Read-only on every table, view and sequence of the cluster, present and future
-- (PostgreSQL 14+): what pg_dump needs, and nothing to write with.
GRANT pg_read_all_data TO keycloak_backup;
ALTER ROLE vault_admin LOGIN CREATEROLE INHERIT NOSUPERUSER NOCREATEDB NOREPLICATION NOBYPASSRLS;

-- The verifier as `pgwarden scram-verifier` prints it (scram_verifier = "…")
-- or bare; anything else, a password above all, is refused.
\if :{?vault_admin_verifier}
SELECT regexp_replace(:'vault_admin_verifier', '^scram_verifier = "(.*)"\s*$', '\1')
       AS vault_admin_verifier \gset
SELECT :'vault_admin_verifier'
       ~ '^SCRAM-SHA-256\$[0-9]+:[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+$'
       AS verifier_ok \gset
\if :verifier_ok
-- Not even the verifier goes to the server log, whatever log_statement says.
SET log_statement = 'none';
SET log_min_error_statement = 'panic';
ALTER ROLE vault_admin PASSWORD :'vault_admin_verifier';
RESET log_statement;
RESET log_min_error_statement;
\else
\warn 'VAULT_ADMIN_VERIFIER is not a SCRAM-SHA-256 verifier: see the top of bootstrap.sql'
SELECT 1 / 0 AS vault_admin_verifier_refused;
\endif
\endif

-- Vault's CREATE ROLE … PASSWORD '…' carries the new role's password (or its
-- SCRAM verifier with password_authentication = scram-sha-256): keep
-- vault_admin's statements out of the server log even where log_statement =
-- 'ddl' (config/postgres/logging.conf) or a failing statement would be logged.
-- Only a superuser can change these, so the dynamic roles cannot undo it.
ALTER ROLE vault_admin SET log_statement = 'none';
ALTER ROLE vault_admin SET log_min_error_statement = 'panic';

-- Revocation ends whatever sessions a dynamic role still has before dropping
-- it: pg_terminate_backend on non-superuser backends needs pg_signal_backend.
GRANT pg_signal_backend TO vault_admin;

-- Creating a role IN ROLE keycloak_owner/keycloak_app/keycloak_backup: PostgreSQL 16 and later
-- require ADMIN OPTION on those roles, and let it come without the right to act
-- as them (INHERIT FALSE, SET FALSE). PostgreSQL 15 lets any CREATEROLE role
-- grant them, so vault_admin is deliberately no member there.
-- Revocation runs DROP OWNED BY the dynamic role, which needs its privileges:
-- on 16 and later vault_admin inherits from the roles it creates (they are
-- NOINHERIT, so that stops there); on 15 revocation.sql grants it just in time.
\if :pg16_or_later
GRANT keycloak_owner TO vault_admin WITH ADMIN OPTION, INHERIT FALSE, SET FALSE;
GRANT keycloak_app TO vault_admin WITH ADMIN OPTION, INHERIT FALSE, SET FALSE;
GRANT keycloak_backup TO vault_admin WITH ADMIN OPTION, INHERIT FALSE, SET FALSE;
ALTER ROLE vault_admin SET createrole_self_grant = 'inherit';
\endif

-- 2. The database, owned by keycloak_owner.
SELECT format('CREATE DATABASE %I OWNER keycloak_owner', :'dbname')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'dbname') \gexec
ALTER DATABASE :"dbname" OWNER TO keycloak_owner;
-- Logins stay possible (pg_hba.conf decides who may connect); temporary
-- tables only for the two NOLOGIN roles, so a dynamic role cannot own one.
REVOKE TEMPORARY ON DATABASE :"dbname" FROM PUBLIC;
GRANT TEMPORARY ON DATABASE :"dbname" TO keycloak_app;
GRANT CONNECT ON DATABASE :"dbname" TO vault_admin;

-- 3. Inside it: the public schema (Keycloak's default, KC_DB_SCHEMA).
\connect :"dbname"
ALTER SCHEMA public OWNER TO keycloak_owner;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO keycloak_app;

-- Read/update/write on what exists now…
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO keycloak_app;
GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO keycloak_app;
-- …and on everything keycloak_owner creates later (migrations).
ALTER DEFAULT PRIVILEGES FOR ROLE keycloak_owner IN SCHEMA public
  GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO keycloak_app;
ALTER DEFAULT PRIVILEGES FOR ROLE keycloak_owner IN SCHEMA public
  GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO keycloak_app;
