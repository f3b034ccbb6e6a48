# Vault server for the docker-compose demo: a single node keeping its data in
# the vault-data volume (file storage), serving TLS with the demo CA's
# certificate. It starts sealed; the vault-init service initialises it on the
# first run, unseals it on every run and configures it (deploy/compose/vault-init.sh).
#
# Not a production layout: use integrated storage (raft) with several nodes,
# auto-unseal, and your own PKI there.

ui = false

# The demo container has no IPC_LOCK capability; file storage keeps nothing
# that mlock would protect better than the host's own swap settings.
disable_mlock = true

api_addr = "https://vault:8200"

storage "file" {
  path = "/vault/file"
}

listener "tcp" {
  address         = "0.0.0.0:8200"
  tls_cert_file   = "/certs/vault/server.crt"
  tls_key_file    = "/certs/vault/server.key"
  tls_min_version = "tls12"
}
