-- Vault creation statements for the role keycloak (steady state).
-- The login role is a NOINHERIT member of keycloak_app and every session acts
-- as keycloak_app: SELECT, INSERT, UPDATE, DELETE and sequences, nothing more.
-- One session per credential. No quotes or semicolons in these comments: Vault
-- splits this text on semicolons.
CREATE ROLE "{{name}}" WITH LOGIN NOINHERIT CONNECTION LIMIT 1 PASSWORD '{{password}}' VALID UNTIL '{{expiration}}' IN ROLE keycloak_app;
ALTER ROLE "{{name}}" SET role = 'keycloak_app';
