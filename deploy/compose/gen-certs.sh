#!/bin/sh
# Demo PKI for docker-compose.yml: one CA and a server certificate each for
# postgres, vault and pgwarden, written to OUT_DIR (default /certs, the `certs`
# volume). Run by the one-shot `certs` service before anything else starts.
#
#   OUT_DIR/ca.crt                      the CA every client trusts (0644)
#   OUT_DIR/ca-private/ca.key           the CA key (root only, 0600)
#   OUT_DIR/<service>/server.crt        certificate for DNS:<service>, localhost, 127.0.0.1
#   OUT_DIR/<service>/server.key        its key, 0600, owned by the uid that service runs as
#
# Owners: postgres 999 (the postgres image's user), vault 100:1000 (the uid
# compose runs the vault image as), pgwarden 65532 (the Dockerfile's USER).
# PostgreSQL refuses a key that others can read, so each key belongs to its
# server alone.
#
# Safe to run again: existing certificates are kept while they are signed by
# the CA and valid for 30 more days, so restarting the demo does not change
# what the clients trust. Remove the volume to start over.
#
# A demo CA. In production, use certificates from your own PKI.
set -eu

OUT_DIR=${1:-/certs}
CA_DAYS=3650
LEAF_DAYS=397
RENEW_BEFORE=2592000 # 30 days, in seconds

umask 022
mkdir -p "$OUT_DIR/ca-private"
chmod 0700 "$OUT_DIR/ca-private"

ca_crt="$OUT_DIR/ca.crt"
ca_key="$OUT_DIR/ca-private/ca.key"

if [ ! -s "$ca_crt" ] || [ ! -s "$ca_key" ] ||
    ! openssl x509 -in "$ca_crt" -noout -checkend "$RENEW_BEFORE" >/dev/null; then
    echo "certs: creating the demo CA"
    (umask 077 && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$ca_key")
    openssl req -x509 -new -key "$ca_key" -sha256 -days "$CA_DAYS" \
        -subj "/CN=pgwarden demo CA" \
        -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -addext "subjectKeyIdentifier=hash" \
        -out "$ca_crt"
    chmod 0644 "$ca_crt"
    # Certificates from an earlier CA are no longer trusted: reissue them all.
    rm -f "$OUT_DIR"/*/server.crt
fi

# issue NAME OWNER: a server certificate for NAME, its key owned by OWNER (uid:gid).
issue() {
    name=$1
    owner=$2
    dir="$OUT_DIR/$name"
    crt="$dir/server.crt"
    key="$dir/server.key"
    mkdir -p "$dir"
    chmod 0755 "$dir"
    if [ -s "$crt" ] && [ -s "$key" ] &&
        openssl verify -CAfile "$ca_crt" "$crt" >/dev/null 2>&1 &&
        openssl x509 -in "$crt" -noout -checkend "$RENEW_BEFORE" >/dev/null; then
        chown "$owner" "$key"
        chmod 0600 "$key"
        echo "certs: keeping the certificate for $name"
        return
    fi
    echo "certs: issuing a certificate for $name"
    ext=$(mktemp)
    cat >"$ext" <<EOF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:$name, DNS:localhost, IP:127.0.0.1
authorityKeyIdentifier = keyid
subjectKeyIdentifier = hash
EOF
    (umask 077 && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$key")
    csr=$(mktemp)
    openssl req -new -key "$key" -subj "/CN=$name" -out "$csr"
    openssl x509 -req -in "$csr" -CA "$ca_crt" -CAkey "$ca_key" -CAcreateserial \
        -CAserial "$OUT_DIR/ca-private/ca.srl" -sha256 -days "$LEAF_DAYS" \
        -extfile "$ext" -out "$crt" 2>/dev/null
    rm -f "$ext" "$csr"
    chmod 0644 "$crt"
    chown "$owner" "$key"
    chmod 0600 "$key"
}

issue postgres 999:999
issue vault 100:1000
issue pgwarden 65532:65532

echo "certs: done (CA: $ca_crt)"
