#!/bin/sh
# docker-compose.yml's pgwarden-backup: compose has no scheduler, so this runs
# `pgwarden backup` at start and then every PGWARDEN_BACKUP_INTERVAL seconds
# (default one day). SIGTERM (docker compose stop) reaches the running backup,
# which stops pg_dump, revokes its credential and leaves no partial file.
# (systemd uses a timer and Kubernetes a CronJob instead: deploy/systemd/,
# deploy/kubernetes/backup/.)
set -u

config=${PGWARDEN_BACKUP_CONFIG:-/etc/pgwarden/backup.toml}
target=${PGWARDEN_BACKUP_TARGET:-keycloak}
interval=${PGWARDEN_BACKUP_INTERVAL:-86400}
case $interval in
"" | *[!0-9]*) echo "backup-loop: PGWARDEN_BACKUP_INTERVAL must be seconds" >&2; exit 2 ;;
esac

stop=0
pid=
on_stop() {
    stop=1
    if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; fi
}
trap on_stop TERM INT

while [ "$stop" = 0 ]; do
    pgwarden backup --config "$config" --target "$target" &
    pid=$!
    # wait returns early when a signal arrives; wait again for the backup to end.
    while kill -0 "$pid" 2>/dev/null; do wait "$pid" || true; done
    pid=
    [ "$stop" = 0 ] || break
    sleep "$interval" &
    pid=$!
    wait "$pid" || true
    kill "$pid" 2>/dev/null || true
    pid=
done
