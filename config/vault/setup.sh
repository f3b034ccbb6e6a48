#!/usr/bin/env bash
# Configures HashiCorp Vault (1.15 or later) for pgwarden in front of Keycloak's
# PostgreSQL: the database secrets engine with a TLS connection, a password
# policy, the two dynamic roles, pgwarden's policy and its AppRole. Run it after
# bootstrap.sql, with the `vault` CLI. Safe to run again: every step creates or
# updates, and each run writes a fresh secret_id.
#
# Environment (an interface: keep these names):
#   VAULT_ADDR                       Vault's address, e.g. https://vault.internal:8200   (required)
#   VAULT_TOKEN                      a token allowed to configure Vault                   (required)
#   PGWARDEN_VAULT_MOUNT             mount of the database secrets engine                 (default: database)
#   PGWARDEN_DB_HOST                 PostgreSQL's host as Vault reaches it; its certificate
#                                    must name it (sslmode=verify-full)                   (required)
#   PGWARDEN_DB_PORT                 PostgreSQL's port                                    (default: 5432)
#   PGWARDEN_DB_NAME                 Keycloak's database; also the connection's name      (default: keycloak)
#   PGWARDEN_DB_ADMIN_USER           the role bootstrap.sql made for Vault                (default: vault_admin)
#   PGWARDEN_DB_ADMIN_PASSWORD_FILE  file holding that role's password; read here and
#                                    passed to vault on stdin, never on a command line    (required)
#   PGWARDEN_DB_CA_FILE              PostgreSQL's CA certificate, as a path on the
#                                    Vault server (Vault opens it, not this script)       (required)
#   PGWARDEN_APPROLE_OUT_DIR         where the files role_id and secret_id are written,
#                                    mode 0600, for pgwarden's [vault] auth               (required)
#
# Nothing secret is printed: not the token, the password, the role_id or the secret_id.

set -euo pipefail
umask 077

# Names and lifetimes. Leases live while their session does: pgwarden renews
# them at 2/3 of LEASE_TTL and recycles a session when LEASE_MAX_TTL is reached.
readonly MIGRATE_ROLE=keycloak-migrate
readonly APP_ROLE=keycloak
readonly LEASE_TTL=1h
readonly LEASE_MAX_TTL=24h
readonly PASSWORD_POLICY=pgwarden-postgres
readonly VAULT_POLICY=pgwarden
readonly APPROLE=pgwarden
readonly TOKEN_TTL=1h
readonly TOKEN_MAX_TTL=24h

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly here

say() { printf 'pgwarden vault setup: %s\n' "$*" >&2; }
die() {
	say "error: $*"
	exit 1
}

require() { # variable, what it should hold
	[[ -n ${!1:-} ]] || die "set $1 to $2"
}
require VAULT_ADDR "the address of Vault"
require VAULT_TOKEN "a token allowed to configure Vault"
require PGWARDEN_DB_HOST "the host of PostgreSQL as Vault reaches it"
require PGWARDEN_DB_ADMIN_PASSWORD_FILE "the file holding the password of the admin role"
require PGWARDEN_DB_CA_FILE "the CA certificate of PostgreSQL, as a path on the Vault server"
require PGWARDEN_APPROLE_OUT_DIR "the directory for role_id and secret_id"
mount=${PGWARDEN_VAULT_MOUNT:-database}
mount=${mount#/}
mount=${mount%/}
db_port=${PGWARDEN_DB_PORT:-5432}
db_name=${PGWARDEN_DB_NAME:-keycloak}
db_user=${PGWARDEN_DB_ADMIN_USER:-vault_admin}
out_dir=$PGWARDEN_APPROLE_OUT_DIR

[[ $mount =~ ^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$ ]] || die "PGWARDEN_VAULT_MOUNT: letters, digits, . _ - and / only"
[[ $db_port =~ ^[0-9]+$ ]] || die "PGWARDEN_DB_PORT: a number"
[[ $db_name =~ ^[A-Za-z0-9_-]+$ ]] || die "PGWARDEN_DB_NAME: letters, digits, _ and - only"
[[ $db_user =~ ^[A-Za-z0-9_-]+$ ]] || die "PGWARDEN_DB_ADMIN_USER: letters, digits, _ and - only"
[[ $PGWARDEN_DB_HOST =~ ^[A-Za-z0-9.:-]+$ ]] || die "PGWARDEN_DB_HOST: a host name or an IP address"
[[ $PGWARDEN_DB_CA_FILE =~ ^/[A-Za-z0-9._/-]+$ ]] || die "PGWARDEN_DB_CA_FILE: an absolute path of letters, digits and . _ - /"
[[ -r $PGWARDEN_DB_ADMIN_PASSWORD_FILE ]] || die "PGWARDEN_DB_ADMIN_PASSWORD_FILE: cannot read that file"
command -v vault >/dev/null || die "the vault CLI is not on PATH"
for f in pgwarden-policy.hcl password-policy.hcl renewal.sql revocation.sql \
	"creation-$MIGRATE_ROLE.sql" "creation-$APP_ROLE.sql"; do
	[[ -r $here/$f ]] || die "$here/$f is missing"
done
mkdir -p "$out_dir"

# The path of an entry in `vault secrets list` / `vault auth list`, and its type.
mounted_type() { # kind (secrets|auth) path
	vault "$1" list -format=table | awk -v path="$2/" '$1 == path { print $2 }'
}

# 1. The database secrets engine.
existing=$(mounted_type secrets "$mount")
case $existing in
"")
	say "enabling the database secrets engine at $mount/"
	vault secrets enable -path="$mount" database
	;;
database) say "the database secrets engine is already enabled at $mount/" ;;
*) die "$mount/ is already mounted, and not as a database secrets engine" ;;
esac

# 2. The password policy for the dynamic roles' passwords.
say "writing the password policy $PASSWORD_POLICY"
vault write "sys/policies/password/$PASSWORD_POLICY" policy=@"$here/password-policy.hcl"

# 3. The connection to PostgreSQL: TLS verify-full against the given CA; the
# password goes as a SCRAM-SHA-256 verifier into CREATE ROLE, never in clear.
host=$PGWARDEN_DB_HOST
if [[ $host == *:* ]]; then
	host="[$host]" # an IPv6 address
fi
url="postgresql://{{username}}:{{password}}@$host:$db_port/$db_name?sslmode=verify-full&sslrootcert=$PGWARDEN_DB_CA_FILE"
say "writing the connection $mount/config/$db_name ($db_user@$host:$db_port/$db_name, verify-full)"
printf '%s' "$(<"$PGWARDEN_DB_ADMIN_PASSWORD_FILE")" |
	vault write "$mount/config/$db_name" \
		plugin_name=postgresql-database-plugin \
		connection_url="$url" \
		username="$db_user" \
		password=- \
		password_authentication=scram-sha-256 \
		password_policy="$PASSWORD_POLICY" \
		allowed_roles="$MIGRATE_ROLE,$APP_ROLE" \
		verify_connection=true

# 4. The two roles: migrations act as keycloak_owner, the steady state as
# keycloak_app (read/update/write only).
for role in "$MIGRATE_ROLE" "$APP_ROLE"; do
	say "writing the role $mount/roles/$role"
	vault write "$mount/roles/$role" \
		db_name="$db_name" \
		creation_statements=@"$here/creation-$role.sql" \
		renew_statements=@"$here/renewal.sql" \
		revocation_statements=@"$here/revocation.sql" \
		default_ttl="$LEASE_TTL" \
		max_ttl="$LEASE_MAX_TTL"
done

# 5. pgwarden's policy, for this mount.
say "writing the policy $VAULT_POLICY"
sed "s|\"database/creds/|\"$mount/creds/|" "$here/pgwarden-policy.hcl" |
	vault policy write "$VAULT_POLICY" -

# 6. pgwarden's AppRole: tokens carry only that policy; the secret id does not
# expire and may be used for every login (pgwarden logs in again whenever its
# token reaches its max TTL). Restrict where it may be used from with
# secret_id_bound_cidrs / token_bound_cidrs where the network allows.
existing=$(mounted_type auth approle)
case $existing in
"")
	say "enabling the AppRole auth method"
	vault auth enable approle
	;;
approle) say "the AppRole auth method is already enabled" ;;
*) die "approle/ is already mounted, and not as the AppRole auth method" ;;
esac
say "writing the AppRole $APPROLE"
vault write "auth/approle/role/$APPROLE" \
	token_policies="$VAULT_POLICY" \
	token_no_default_policy=true \
	token_type=service \
	token_ttl="$TOKEN_TTL" \
	token_max_ttl="$TOKEN_MAX_TTL" \
	token_num_uses=0 \
	bind_secret_id=true \
	secret_id_ttl=0 \
	secret_id_num_uses=0

# 7. role_id and a fresh secret_id, written whole or not at all.
write_private() { # file command...
	local file=$1 tmp
	shift
	tmp=$(mktemp "$out_dir/.${file}.XXXXXX")
	if ! "$@" >"$tmp"; then
		rm -f "$tmp"
		die "could not obtain $file"
	fi
	chmod 600 "$tmp"
	mv -f "$tmp" "$out_dir/$file"
}
write_private role_id vault read -field=role_id "auth/approle/role/$APPROLE/role-id"
write_private secret_id vault write -f -field=secret_id "auth/approle/role/$APPROLE/secret-id"
say "wrote role_id and secret_id to $out_dir (mode 0600)"
say "done: pgwarden may now use [credentials] source = \"vault\", mount = \"$mount\", role = \"$APP_ROLE\" or \"$MIGRATE_ROLE\""
