#!/bin/sh
# The OWNER's recovery of the replicated CAS (compose profile `ha`) after every member stopped at once
# (`docker-compose stop`/`down` of the stack, a host reboot): their counters lived only in memory, so no
# member can rejoin and the deployment stays closed until the owner reopens it (docs/CAS.md "Recovery").
# Run explicitly, never by `up` (service `ha-recover`, profile `ha-recover`):
#
#   sign      refuses if any member answers; else signs an expiring statement (cdbp recover deployment,
#             bound to the deployment CA, CDBP_HA_RECOVER_MINUTES, default 30) into the volume member 1
#             looks in before each try to start (compose/bin/cas-ha-run.sh consumes it there).
#   reanchor  waits until the three members answer, then re-anchors each service's counter
#             (CDBP_HA_SERVICES, default mariadb) to the sealed record on its untrusted volume AS FOUND
#             NOW (cdbp recover --record; owner-signed, audited, a majority must accept). Run it only if
#             nobody could have rolled that volume back while the stack was down.
set -eu
step=${1:-sign}
URLS=${CDBP_CAS_URL:?CDBP_CAS_URL is not set}
CA=${CDBP_CAS_CA_FILE:-/srv/cas-public/ca.pem}
OWNER_KEY=${CDBP_OWNER_KEY_FILE:-/keys/owner/owner.key}
RECOVERY_DIR=${CDBP_HA_RECOVERY_DIR:-/srv/cas-ha-recovery}
UNTRUSTED=${CDBP_UNTRUSTED_DIR:-/srv/untrusted/freshness}
say() { echo "cdbp-ha-recover: $*" >&2; }
# A running member answers at once; a stopped one's name may take a resolver timeout to fail: cap it.
answers() { timeout 5 node /app/compose/bin/healthcheck.mjs "$1/readyz" "$CA" >/dev/null 2>&1; }
[ -s "$CA" ] || { say "no deployment CA at $CA: nothing to recover (the deployment was never bootstrapped)"; exit 1; }

case "$step" in
  sign)
    # All members at once (a name that does not resolve, i.e. a stopped container, can take seconds).
    answering=/tmp/answering
    : >"$answering"
    for url in $(echo "$URLS" | tr ',' ' '); do (if answers "$url"; then echo "$url" >>"$answering"; fi) & done
    wait
    if [ -s "$answering" ]; then
      say "$(tr '\n' ' ' <"$answering")answers: members still run, so this is no full stop. A stopped member rejoins the running ones by itself; nothing signed."
      exit 1
    fi
    # Written beside, then renamed: member 1 never reads half a statement.
    node /app/bin/cdbp.js recover deployment --ca "$CA" --owner-key "$OWNER_KEY" --out "$RECOVERY_DIR/recover.json.tmp" \
      --valid-minutes "${CDBP_HA_RECOVER_MINUTES:-30}" >/dev/null
    mv "$RECOVERY_DIR/recover.json.tmp" "$RECOVERY_DIR/recover.json"
    not_after=$(node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")).statement.notAfter)' "$RECOVERY_DIR/recover.json")
    say "statement signed, valid until $not_after. cas-1, which retries to join every few seconds, takes it at its next"
    say "try and reopens the deployment (start it if it is not running; do not restart it once it serves). Then:"
    say "docker-compose ... up -d cas-3 (cas-2 and cas-3 join it), docker-compose ... run --rm ha-recover reanchor."
    ;;
  reanchor)
    deadline=$(( $(date +%s) + ${CDBP_HA_WAIT_SECONDS:-180} ))
    for url in $(echo "$URLS" | tr ',' ' '); do
      until answers "$url"; do
        [ "$(date +%s)" -lt "$deadline" ] || { say "$url does not answer: start the members (docker-compose ... up -d cas-3) and retry"; exit 1; }
        sleep 1
      done
    done
    for service in $(echo "${CDBP_HA_SERVICES:-mariadb}" | tr ',' ' '); do
      record=$UNTRUSTED/freshness-$service.sealed
      if [ ! -s "$record" ]; then
        # Its counter stays unanchored (the proxy refuses to start: COUNTER_UNANCHORED): "never advanced"
        # would let it take any data directory for a first start, which only the owner can vouch for.
        say "$service: no sealed record on its volume: not re-anchored. If it never started, the owner runs"
        say "  cdbp recover --cas \"$URLS\" --ca $CA --owner-key OWNER_KEY --service $service --value 0 --digest ''"
        continue
      fi
      node /app/bin/cdbp.js recover --cas "$URLS" --ca "$CA" --owner-key "$OWNER_KEY" --service "$service" --record "$record"
    done
    say "done: start the database (docker-compose ... up -d proxy-ha; restart proxy-ha if it was running)"
    ;;
  *) say "usage: ha-recover.sh sign|reanchor"; exit 2 ;;
esac
