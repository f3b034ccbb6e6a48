-- Vault creation statements for the role keycloak-backup (pgwarden backup).
-- The login role is a NOINHERIT member of keycloak_backup and every session acts
-- as keycloak_backup, which may read every table (pg_read_all_data) and write
-- nothing. One session per credential: pg_dump opens exactly one. No quotes or
-- semicolons in these comments: Vault splits this text on semicolons.
CREATE ROLE "{{name}}" WITH LOGIN NOINHERIT CONNECTION LIMIT 1 PASSWORD '{{password}}' VALID UNTIL '{{expiration}}' IN ROLE keycloak_backup;
ALTER ROLE "{{name}}" SET role = 'keycloak_backup';
