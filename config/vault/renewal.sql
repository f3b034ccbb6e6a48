-- Vault renewal statement for both roles: moves the expiry of the login.
ALTER ROLE "{{name}}" VALID UNTIL '{{expiration}}';
