# Vault policy for the token of `pgwarden backup`: exactly what a backup run
# calls, nothing more. It is the only policy of the AppRole pgwarden-backup
# (token_no_default_policy), which setup.sh writes; the proxy's token cannot
# read these credentials, and this token cannot read the proxy's.
#
#   vault policy write pgwarden-backup pgwarden-backup-policy.hcl
#
# setup.sh writes it with the database secrets engine's mount in place of
# "database" when PGWARDEN_VAULT_MOUNT says otherwise.

# One read-only credential per backup run (GET <mount>/creds/keycloak-backup).
path "database/creds/keycloak-backup" {
  capabilities = ["read"]
}

# Renew the run's lease while pg_dump runs; revoke it when the dump ends.
path "sys/leases/renew" {
  capabilities = ["update"]
}

path "sys/leases/revoke" {
  capabilities = ["update"]
}

# The run's own token: renewed during a long dump, looked up with auth = token.
path "auth/token/renew-self" {
  capabilities = ["update"]
}

path "auth/token/lookup-self" {
  capabilities = ["read"]
}
