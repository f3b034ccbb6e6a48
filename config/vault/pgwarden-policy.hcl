# Vault policy for pgwarden's own token: exactly what pgwarden calls, nothing more.
#
#   vault policy write pgwarden pgwarden-policy.hcl
#
# setup.sh writes it with the database secrets engine's mount in place of
# "database" when PGWARDEN_VAULT_MOUNT says otherwise. The AppRole it creates
# sets token_no_default_policy, so this is the token's only policy.

# A fresh credential for every upstream connection (GET <mount>/creds/<role>):
# the migration role and the steady-state role.
path "database/creds/keycloak-migrate" {
  capabilities = ["read"]
}

path "database/creds/keycloak" {
  capabilities = ["read"]
}

# Renew a session's lease while it lives; revoke it when the session ends.
# (Vault's default policy has renew but not revoke; the AppRole does not attach
# the default policy anyway.)
path "sys/leases/renew" {
  capabilities = ["update"]
}

path "sys/leases/revoke" {
  capabilities = ["update"]
}

# pgwarden's own token: renewed at 2/3 of its TTL, looked up at login with
# auth = token.
path "auth/token/renew-self" {
  capabilities = ["update"]
}

path "auth/token/lookup-self" {
  capabilities = ["read"]
}
