-- Vault creation statements for the role keycloak-migrate (schema migrations).
-- The login role is a NOINHERIT member of keycloak_owner and every session acts
-- as keycloak_owner, so all it creates belongs to keycloak_owner and the login
-- role owns nothing. One session per credential. No quotes or semicolons in
-- these comments: Vault splits this text on semicolons.
CREATE ROLE "{{name}}" WITH LOGIN NOINHERIT CONNECTION LIMIT 1 PASSWORD '{{password}}' VALID UNTIL '{{expiration}}' IN ROLE keycloak_owner;
ALTER ROLE "{{name}}" SET role = 'keycloak_owner';
