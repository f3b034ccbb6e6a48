-- Vault revocation statement for both roles, one PL/pgSQL block that Vault runs
-- whole. Ends the sessions the role still has, waiting up to 5 s for them, then
-- drops what the role may have made its own (large objects, default privileges
-- and the like, possible after SET ROLE NONE) and the role itself. Succeeds when
-- the role is already gone. On PostgreSQL 15 it first makes the admin a member
-- of the role, which DROP OWNED needs.
DO $$
DECLARE
  target text := '{{name}}';
BEGIN
  PERFORM pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE usename = target;
  IF EXISTS (SELECT FROM pg_roles WHERE rolname = target) THEN
    IF NOT pg_has_role(current_user, target, 'USAGE') THEN
      EXECUTE format('GRANT %I TO %I', target, current_user);
    END IF;
    EXECUTE format('DROP OWNED BY %I', target);
    EXECUTE format('DROP ROLE %I', target);
  END IF;
END
$$;
