#!/bin/sh
# Configures HashiCorp Vault (1.15 or later) for pgwarden in front of Keycloak's
# PostgreSQL: the database secrets engine with a TLS connection, a password
# policy, the three dynamic roles, pgwarden's policies and AppRoles. Run it after
# bootstrap.sql, with the `vault` CLI: `sh setup.sh`. Safe to run again: every
# step creates or updates, and each run writes a fresh secret_id.
#
# POSIX sh, so that it runs where the `vault` CLI lives: busybox ash (the
# hashicorp/vault image has no bash), dash, bash. No `local`, no pipefail: a
# value that a later command needs is read into a variable first, so that a
# failure stops the script (set -e) instead of vanishing inside a pipe.
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
#                                    mode 0600, for pgwarden's [vault] auth; unset (only
#                                    with Kubernetes auth): the AppRole is written, no
#                                    secret id is issued                    (required without Kubernetes auth)
#   PGWARDEN_K8S_SERVICE_ACCOUNT     namespace/name of the Kubernetes service account
#                                    pgwarden's pod runs as (deploy/kubernetes/): set, the
#                                    Kubernetes auth method is configured and its role
#                                    `pgwarden` bound to that account alone              (optional)
#   PGWARDEN_K8S_HOST                the Kubernetes API as Vault reaches it, e.g.
#                                    https://kubernetes.default.svc      (required with the account)
#   PGWARDEN_K8S_CA_FILE             the API server's CA certificate, a file read here;
#                                    unset: Vault running in the cluster uses its own
#                                    (a Vault outside the cluster refuses the
#                                    configuration without it)                           (optional)
#   PGWARDEN_K8S_AUDIENCE            the audience of the pod's projected token           (default: vault)
#   PGWARDEN_K8S_BACKUP_SERVICE_ACCOUNT
#                                    namespace/name of the backup CronJob's account:
#                                    role `pgwarden-backup`, bound to it alone           (optional)
#   PGWARDEN_BACKUP_APPROLE_OUT_DIR  where `pgwarden backup`'s role_id and secret_id are
#                                    written (its own AppRole, read-only role); unset:
#                                    the AppRole is written, no secret id is issued       (optional)
#
# Nothing secret is printed: not the token, the password, the role_id or the secret_id.

set -eu
umask 077
# ASCII ranges in the patterns below, whatever the caller's locale.
LC_ALL=C
export LC_ALL
unset CDPATH

# Names and lifetimes. Leases live while their session does: pgwarden renews
# them at 2/3 of LEASE_TTL and recycles a session when LEASE_MAX_TTL is reached.
readonly MIGRATE_ROLE=keycloak-migrate
readonly APP_ROLE=keycloak
readonly LEASE_TTL=1h
readonly LEASE_MAX_TTL=24h
readonly PASSWORD_POLICY=pgwarden-postgres
readonly VAULT_POLICY=pgwarden
readonly APPROLE=pgwarden
# pgwarden's token is periodic: renewed every TOKEN_PERIOD (pgwarden does so at
# 2/3 of it) for as long as pgwarden runs, with no maximum lifetime. Vault
# revokes every lease a token obtained when that token expires, so a token with
# a max TTL would end every session opened under it at that moment, however
# young its lease. Unrenewed (pgwarden stopped or cut off), it expires within
# one period, and its leases with it.
readonly TOKEN_PERIOD=1h
# The backup host's own token: each run logs in afresh, so an ordinary TTL.
readonly BACKUP_TOKEN_TTL=1h
readonly BACKUP_TOKEN_MAX_TTL=24h
# `pgwarden backup`: a read-only role whose credential lives one dump. Its lease
# is renewed while pg_dump runs, up to BACKUP_LEASE_MAX_TTL, and revoked after.
readonly BACKUP_ROLE=keycloak-backup
readonly BACKUP_LEASE_TTL=15m
readonly BACKUP_LEASE_MAX_TTL=6h
readonly BACKUP_POLICY=pgwarden-backup
readonly BACKUP_APPROLE=pgwarden-backup

say() { printf 'pgwarden vault setup: %s\n' "$*" >&2; }
die() {
	say "error: $*"
	exit 1
}

# The directory of this script, where the policy and statement files are.
case $0 in
*/*) here=${0%/*} ;;
*) here=. ;;
esac
here=$(cd "${here:-/}" && pwd)
readonly here

# `${VAR:+set}`, not the value: no secret needs to be an argument even here.
require() { # variable, "set" when it holds something, what it should hold
	[ -n "$2" ] || die "set $1 to $3"
}
require VAULT_ADDR "${VAULT_ADDR:+set}" "the address of Vault"
require VAULT_TOKEN "${VAULT_TOKEN:+set}" "a token allowed to configure Vault"
require PGWARDEN_DB_HOST "${PGWARDEN_DB_HOST:+set}" "the host of PostgreSQL as Vault reaches it"
require PGWARDEN_DB_ADMIN_PASSWORD_FILE "${PGWARDEN_DB_ADMIN_PASSWORD_FILE:+set}" "the file holding the password of the admin role"
require PGWARDEN_DB_CA_FILE "${PGWARDEN_DB_CA_FILE:+set}" "the CA certificate of PostgreSQL, as a path on the Vault server"
k8s_account=${PGWARDEN_K8S_SERVICE_ACCOUNT:-}
k8s_backup_account=${PGWARDEN_K8S_BACKUP_SERVICE_ACCOUNT:-}
if [ -z "$k8s_account" ]; then
	require PGWARDEN_APPROLE_OUT_DIR "${PGWARDEN_APPROLE_OUT_DIR:+set}" "the directory for role_id and secret_id"
	[ -z "$k8s_backup_account" ] || die "PGWARDEN_K8S_BACKUP_SERVICE_ACCOUNT needs PGWARDEN_K8S_SERVICE_ACCOUNT"
else
	require PGWARDEN_K8S_HOST "${PGWARDEN_K8S_HOST:+set}" "the address of the Kubernetes API as Vault reaches it"
fi
mount=${PGWARDEN_VAULT_MOUNT:-database}
mount=${mount#/}
mount=${mount%/}
db_port=${PGWARDEN_DB_PORT:-5432}
db_name=${PGWARDEN_DB_NAME:-keycloak}
db_user=${PGWARDEN_DB_ADMIN_USER:-vault_admin}
host=$PGWARDEN_DB_HOST
ca_file=$PGWARDEN_DB_CA_FILE
password_file=$PGWARDEN_DB_ADMIN_PASSWORD_FILE
out_dir=${PGWARDEN_APPROLE_OUT_DIR:-}
backup_out_dir=${PGWARDEN_BACKUP_APPROLE_OUT_DIR:-}
k8s_host=${PGWARDEN_K8S_HOST:-}
k8s_ca_file=${PGWARDEN_K8S_CA_FILE:-}
k8s_audience=${PGWARDEN_K8S_AUDIENCE:-vault}

# Segments of letters, digits, . _ -, joined by single slashes.
case $mount in
"" | /* | */ | *//* | *[!A-Za-z0-9._/-]*) die "PGWARDEN_VAULT_MOUNT: letters, digits, . _ - and / only" ;;
esac
case $db_port in
"" | *[!0-9]*) die "PGWARDEN_DB_PORT: a number" ;;
esac
case $db_name in
"" | *[!A-Za-z0-9_-]*) die "PGWARDEN_DB_NAME: letters, digits, _ and - only" ;;
esac
case $db_user in
"" | *[!A-Za-z0-9_-]*) die "PGWARDEN_DB_ADMIN_USER: letters, digits, _ and - only" ;;
esac
case $host in
"" | *[!A-Za-z0-9.:-]*) die "PGWARDEN_DB_HOST: a host name or an IP address" ;;
esac
case $ca_file in
/ | [!/]* | *[!A-Za-z0-9._/-]*) die "PGWARDEN_DB_CA_FILE: an absolute path of letters, digits and . _ - /" ;;
esac
# namespace/name, each a DNS label (RFC 1123) as Kubernetes names them.
check_account() { # variable value
	case $2 in
	"") ;;
	*/*/* | /* | */ | *[!a-z0-9/-]* | -* | */-* | *-/* | *-) die "$1: namespace/name, lowercase letters, digits and - only" ;;
	*/*) ;;
	*) die "$1: namespace/name, e.g. keycloak/keycloak" ;;
	esac
}
check_account PGWARDEN_K8S_SERVICE_ACCOUNT "$k8s_account"
check_account PGWARDEN_K8S_BACKUP_SERVICE_ACCOUNT "$k8s_backup_account"
case $k8s_host in
"" | https://*) ;;
*) die "PGWARDEN_K8S_HOST: an https:// address" ;;
esac
case $k8s_host in
*[!A-Za-z0-9.:/-]*) die "PGWARDEN_K8S_HOST: an https:// address (a host name or IPv4 address, a port)" ;;
esac
case $k8s_audience in
"" | *[!A-Za-z0-9._:/-]*) die "PGWARDEN_K8S_AUDIENCE: letters, digits and . _ : / - only" ;;
esac
if [ -n "$k8s_ca_file" ] && [ ! -r "$k8s_ca_file" ]; then
	die "PGWARDEN_K8S_CA_FILE: cannot read that file"
fi
# Read now, before Vault is touched, without its trailing newlines; a failed
# read stops the script here rather than sending vault an empty password.
password=$(cat "$password_file") || die "PGWARDEN_DB_ADMIN_PASSWORD_FILE: cannot read that file"
command -v vault >/dev/null || die "the vault CLI is not on PATH"
# The password reaches vault through printf; only a builtin printf keeps it off
# every command line (dash, busybox ash and bash all have one).
[ "$(command -v printf)" = printf ] || die "run this script with a shell whose printf is a builtin (sh, busybox sh, bash)"
for f in pgwarden-policy.hcl pgwarden-backup-policy.hcl password-policy.hcl renewal.sql \
	revocation.sql "creation-$MIGRATE_ROLE.sql" "creation-$APP_ROLE.sql" "creation-$BACKUP_ROLE.sql"; do
	[ -r "$here/$f" ] || die "$here/$f is missing"
done
if [ -n "$out_dir" ]; then mkdir -p "$out_dir"; fi
if [ -n "$backup_out_dir" ]; then mkdir -p "$backup_out_dir"; fi

# The type of the entry at a path in `vault secrets list` / `vault auth list`,
# into $mounted (empty when nothing is mounted there).
mounted_type() { # kind (secrets|auth) path
	listing=$(vault "$1" list -format=table) || die "could not list the $1 mounts"
	mounted=$(printf '%s\n' "$listing" | awk -v path="$2/" '$1 == path { print $2 }')
}

# 1. The database secrets engine.
mounted_type secrets "$mount"
case $mounted in
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
case $host in
*:*) host="[$host]" ;; # an IPv6 address
esac
url="postgresql://{{username}}:{{password}}@$host:$db_port/$db_name?sslmode=verify-full&sslrootcert=$ca_file"
say "writing the connection $mount/config/$db_name ($db_user@$host:$db_port/$db_name, verify-full)"
printf '%s' "$password" |
	vault write "$mount/config/$db_name" \
		plugin_name=postgresql-database-plugin \
		connection_url="$url" \
		username="$db_user" \
		password=- \
		password_authentication=scram-sha-256 \
		password_policy="$PASSWORD_POLICY" \
		allowed_roles="$MIGRATE_ROLE,$APP_ROLE,$BACKUP_ROLE" \
		verify_connection=true
unset password

# 4. The three roles: migrations act as keycloak_owner, the steady state as
# keycloak_app (read/update/write only), backups as keycloak_backup (read only).
write_role() { # role default_ttl max_ttl
	say "writing the role $mount/roles/$1"
	vault write "$mount/roles/$1" \
		db_name="$db_name" \
		creation_statements=@"$here/creation-$1.sql" \
		renew_statements=@"$here/renewal.sql" \
		revocation_statements=@"$here/revocation.sql" \
		default_ttl="$2" \
		max_ttl="$3"
}
write_role "$MIGRATE_ROLE" "$LEASE_TTL" "$LEASE_MAX_TTL"
write_role "$APP_ROLE" "$LEASE_TTL" "$LEASE_MAX_TTL"
write_role "$BACKUP_ROLE" "$BACKUP_LEASE_TTL" "$BACKUP_LEASE_MAX_TTL"

# 5. The policies of the proxy and of the backups, for this mount.
write_policy() { # name file
	say "writing the policy $1"
	policy=$(sed "s|\"database/creds/|\"$mount/creds/|" "$here/$2") ||
		die "could not read $here/$2"
	printf '%s\n' "$policy" | vault policy write "$1" -
}
write_policy "$VAULT_POLICY" pgwarden-policy.hcl
write_policy "$BACKUP_POLICY" pgwarden-backup-policy.hcl

# 6. pgwarden's AppRole: periodic tokens (see TOKEN_PERIOD; the TTLs are reset
# to 0 so that a re-run over an older setup leaves no max TTL behind) that
# carry only that policy; the secret id does not expire and may be used for
# every login (pgwarden logs in again whenever its token is lost: revoked, or
# expired while Vault was out of reach). Restrict where it may be used from with
# secret_id_bound_cidrs / token_bound_cidrs where the network allows.
mounted_type auth approle
case $mounted in
"")
	say "enabling the AppRole auth method"
	vault auth enable approle
	;;
approle) say "the AppRole auth method is already enabled" ;;
*) die "approle/ is already mounted, and not as the AppRole auth method" ;;
esac
write_approle() { # name policy token-settings...
	approle_name=$1
	approle_policy=$2
	shift 2
	say "writing the AppRole $approle_name"
	vault write "auth/approle/role/$approle_name" \
		token_policies="$approle_policy" \
		token_no_default_policy=true \
		token_type=service \
		"$@" \
		token_num_uses=0 \
		bind_secret_id=true \
		secret_id_ttl=0 \
		secret_id_num_uses=0
}
write_approle "$APPROLE" "$VAULT_POLICY" \
	token_period="$TOKEN_PERIOD" \
	token_ttl=0 \
	token_max_ttl=0 \
	token_explicit_max_ttl=0
# The backup host's own AppRole: its token can read the backup role's
# credentials and nothing of the proxy's (and the proxy's nothing of its).
write_approle "$BACKUP_APPROLE" "$BACKUP_POLICY" \
	token_period=0 \
	token_ttl="$BACKUP_TOKEN_TTL" \
	token_max_ttl="$BACKUP_TOKEN_MAX_TTL" \
	token_explicit_max_ttl=0

# 7. role_id and a fresh secret_id, written whole or not at all. (Globals with
# the function's prefix: POSIX sh has no `local`.)
write_private() { # dir file command...
	wp_dir=$1
	wp_file=$2
	shift 2
	wp_tmp=$(mktemp "$wp_dir/.$wp_file.XXXXXX") || die "could not create a file in $wp_dir"
	if ! "$@" >"$wp_tmp"; then
		rm -f "$wp_tmp"
		die "could not obtain $wp_file"
	fi
	chmod 600 "$wp_tmp"
	mv -f "$wp_tmp" "$wp_dir/$wp_file"
}
if [ -n "$out_dir" ]; then
	write_private "$out_dir" role_id vault read -field=role_id "auth/approle/role/$APPROLE/role-id"
	write_private "$out_dir" secret_id vault write -f -field=secret_id "auth/approle/role/$APPROLE/secret-id"
	say "wrote role_id and secret_id to $out_dir (mode 0600)"
fi
if [ -n "$backup_out_dir" ]; then
	write_private "$backup_out_dir" role_id vault read -field=role_id "auth/approle/role/$BACKUP_APPROLE/role-id"
	write_private "$backup_out_dir" secret_id vault write -f -field=secret_id "auth/approle/role/$BACKUP_APPROLE/secret-id"
	say "wrote the backup AppRole's role_id and secret_id to $backup_out_dir (mode 0600)"
fi
# 8. Kubernetes auth, when asked: pgwarden's pod logs in with its projected
# service-account token (audience $k8s_audience) and gets the same periodic
# token, with the same policy, as through the AppRole; each role is bound to
# one service account in one namespace.
if [ -n "$k8s_account" ]; then
	mounted_type auth kubernetes
	case $mounted in
	"")
		say "enabling the Kubernetes auth method"
		vault auth enable kubernetes
		;;
	kubernetes) say "the Kubernetes auth method is already enabled" ;;
	*) die "kubernetes/ is already mounted, and not as the Kubernetes auth method" ;;
	esac
	say "writing auth/kubernetes/config ($k8s_host)"
	if [ -n "$k8s_ca_file" ]; then
		vault write auth/kubernetes/config kubernetes_host="$k8s_host" kubernetes_ca_cert=@"$k8s_ca_file"
	else
		vault write auth/kubernetes/config kubernetes_host="$k8s_host"
	fi
	write_k8s_role() { # name account policy token-settings...
		k8s_role=$1
		k8s_namespace=${2%%/*}
		k8s_name=${2#*/}
		k8s_policy=$3
		shift 3
		say "writing the Kubernetes auth role $k8s_role (service account $k8s_name in $k8s_namespace)"
		vault write "auth/kubernetes/role/$k8s_role" \
			bound_service_account_names="$k8s_name" \
			bound_service_account_namespaces="$k8s_namespace" \
			audience="$k8s_audience" \
			token_policies="$k8s_policy" \
			token_no_default_policy=true \
			token_type=service \
			"$@" \
			token_num_uses=0
	}
	write_k8s_role "$APPROLE" "$k8s_account" "$VAULT_POLICY" \
		token_period="$TOKEN_PERIOD" \
		token_ttl=0 \
		token_max_ttl=0 \
		token_explicit_max_ttl=0
	if [ -n "$k8s_backup_account" ]; then
		write_k8s_role "$BACKUP_APPROLE" "$k8s_backup_account" "$BACKUP_POLICY" \
			token_period=0 \
			token_ttl="$BACKUP_TOKEN_TTL" \
			token_max_ttl="$BACKUP_TOKEN_MAX_TTL" \
			token_explicit_max_ttl=0
	fi
fi
say "done: pgwarden may now use [credentials] source = \"vault\", mount = \"$mount\", role = \"$APP_ROLE\" or \"$MIGRATE_ROLE\"; pgwarden backup role = \"$BACKUP_ROLE\""
