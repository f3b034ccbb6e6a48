#!/bin/sh
# One-shot for docker-compose.yml: bring the demo Vault to a configured state.
# Runs in the hashicorp/vault image (busybox sh and the vault CLI), as root so
# that it can hand the AppRole files to pgwarden's uid.
#
# 1. wait until the Vault server answers;
# 2. first run only: initialise it with one unseal key and keep the key and the
#    root token in the vault-keys volume (a demo shortcut: in production the
#    key shares go to different people, or Vault auto-unseals, and the root
#    token is revoked after set-up);
# 3. unseal it (it starts sealed after every restart);
# 4. run config/vault/setup.sh with the root token as VAULT_TOKEN; it enables
#    the database secrets engine, the roles and pgwarden's AppRole, and writes
#    role_id and secret_id to PGWARDEN_APPROLE_OUT_DIR;
# 5. make those two files readable by pgwarden's uid only; the same for the
#    backup AppRole's files in PGWARDEN_BACKUP_APPROLE_OUT_DIR, when set, and
#    the backup image's uid.
#
# Environment: VAULT_ADDR, VAULT_CACERT, PGWARDEN_APPROLE_OUT_DIR (and what
# setup.sh reads); VAULT_KEYS_DIR (default /vault-keys), VAULT_SETUP_SCRIPT
# (default /setup/setup.sh), PGWARDEN_UID (default 65532, the image's USER),
# PGWARDEN_BACKUP_UID (default 999, the backup image's USER).
# Nothing secret is printed.
set -eu

: "${VAULT_ADDR:?}" "${VAULT_CACERT:?}" "${PGWARDEN_APPROLE_OUT_DIR:?}"
keys=${VAULT_KEYS_DIR:-/vault-keys}
setup=${VAULT_SETUP_SCRIPT:-/setup/setup.sh}
pgwarden_uid=${PGWARDEN_UID:-65532}
backup_uid=${PGWARDEN_BACKUP_UID:-999}
backup_dir=${PGWARDEN_BACKUP_APPROLE_OUT_DIR:-}

# `vault status` exits 0 when unsealed, 2 when sealed (or not initialised),
# 1 when Vault cannot be reached.
status() {
    if vault status >/dev/null 2>&1; then echo 0; else echo $?; fi
}

echo "vault-init: waiting for $VAULT_ADDR"
tries=0
while [ "$(status)" = 1 ]; do
    tries=$((tries + 1))
    if [ "$tries" -ge 120 ]; then
        echo "vault-init: Vault did not answer within 120 s" >&2
        vault status >&2 || true
        exit 1
    fi
    sleep 1
done

umask 077
mkdir -p "$keys"
if vault operator init -status >/dev/null 2>&1; then
    echo "vault-init: Vault is initialised"
else
    echo "vault-init: initialising Vault (one unseal key, kept in the vault-keys volume)"
    vault operator init -key-shares=1 -key-threshold=1 >"$keys/init.out"
    awk '/^Unseal Key 1:/ { print $NF }' "$keys/init.out" >"$keys/unseal-key"
    awk '/^Initial Root Token:/ { print $NF }' "$keys/init.out" >"$keys/root-token"
    if [ ! -s "$keys/unseal-key" ] || [ ! -s "$keys/root-token" ]; then
        echo "vault-init: could not read the unseal key and root token from 'vault operator init'" >&2
        exit 1
    fi
    rm -f "$keys/init.out"
fi

if [ "$(status)" = 2 ]; then
    echo "vault-init: unsealing"
    # The key is an argument only inside this short-lived container, whose
    # processes can read the vault-keys volume anyway.
    vault operator unseal "$(cat "$keys/unseal-key")" >/dev/null
fi
if [ "$(status)" != 0 ]; then
    echo "vault-init: Vault is still sealed or unreachable" >&2
    vault status >&2 || true
    exit 1
fi

VAULT_TOKEN=$(cat "$keys/root-token")
export VAULT_TOKEN
mkdir -p "$PGWARDEN_APPROLE_OUT_DIR"
echo "vault-init: running $setup"
sh "$setup"

hand_over() { # directory uid
    for f in role_id secret_id; do
        if [ ! -s "$1/$f" ]; then
            echo "vault-init: $setup did not write $1/$f" >&2
            exit 1
        fi
        chown "$2:$2" "$1/$f"
        chmod 0400 "$1/$f"
    done
}
hand_over "$PGWARDEN_APPROLE_OUT_DIR" "$pgwarden_uid"
if [ -n "$backup_dir" ]; then
    hand_over "$backup_dir" "$backup_uid"
fi
echo "vault-init: done"
