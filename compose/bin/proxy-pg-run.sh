#!/bin/sh
# Runs `cdbp proxy` for the PostgreSQL profile. The proxy reads WAL positions as the monitor role over
# PostgreSQL's socket; that role has a random password per PostgreSQL start, which the postgres
# container's entrypoint leaves on the tmpfs both containers share (0600, uid 10001). The proxy's
# postgres path passes no password of its own to its monitor connection, so it reaches node-postgres as
# PGPASSWORD, set here in this process's environment only (never in the compose file or an image); also
# as CDBP_MONITOR_PASSWORD, the proxy's own setting for its monitor account (used by the MariaDB path).
set -eu
FILE=${CDBP_PG_MONITOR_PASSWORD_FILE:-/run/cdbp-pg/monitor-password}
waited=0
while [ ! -s "$FILE" ]; do
  [ "$waited" -ge 120 ] && { echo "cdbp-proxy-pg: no monitor password in $FILE after 120 s" >&2; exit 1; }
  sleep 1; waited=$((waited + 1))
done
PGPASSWORD=$(cat "$FILE")
CDBP_MONITOR_PASSWORD=$PGPASSWORD
export PGPASSWORD CDBP_MONITOR_PASSWORD
exec node /app/bin/cdbp.js proxy "$@"
