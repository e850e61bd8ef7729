#!/bin/sh
# Runs one member of the replicated CAS (compose profile `ha`; docs/CAS.md "Replicated CAS") and decides
# HOW it starts. The member's flags common to every start (slot, peers, etcd, owner allow-list, the
# simulated platform key a joiner signs with, ports) come from the compose service as CDBP_CAS_* variables
# and arguments; this script adds exactly one of:
#
#   bootstrap  member 1 only, its state directory empty AND no deployment CA published yet: a new
#              deployment (once; `cdbp cas` itself also refuses it over a non-empty etcd).
#   recover    member 1 only, the owner's signed statement found in $RECOVERY_DIR (compose `ha-recover`):
#              reopens the deployment after every member stopped. The statement is CONSUMED (moved out of
#              the volume) before it is used, so it is tried once: a member that restarts later joins.
#   join       every other start, of any member: attests to the two others with the deployment CA pinned.
#              A member that lost its memory needs both others alive to catch up. A join that fails is
#              retried here every few seconds (no Docker back-off), looking for the owner's statement
#              before each try; after a stop of the WHOLE stack no join can succeed, so the deployment
#              stays closed until the owner reopens it: it never reopens by itself.
#
# Member 1 publishes the deployment's PUBLIC CA to $PUBLIC_DIR (like cas-run.sh); the others and the
# proxies pin it from there. Unlike cas-run.sh it never deletes it: the CA is the deployment's, not one
# start's, and it is what tells a later start of member 1 that a deployment exists.
# Once a member served, its exit is the container's exit (Docker's restart policy brings a crashed
# member back; it then joins as a new incarnation).
set -eu
# The member's slot (1..n, the same across its restarts) is `cdbp cas`'s own CDBP_CAS_HA_SLOT.
MEMBER=${CDBP_CAS_HA_SLOT:?CDBP_CAS_HA_SLOT (1, 2 or 3) is not set}
DIR=${CDBP_CAS_DIR:-/var/lib/cdbp-cas}
PUBLIC_DIR=${CDBP_CAS_PUBLIC_DIR:-/srv/cas-public}
RECOVERY_DIR=${CDBP_HA_RECOVERY_DIR:-/srv/cas-ha-recovery}
RETRY_SECONDS=${CDBP_HA_JOIN_RETRY_SECONDS:-3}
say() { echo "cdbp-cas-ha[$MEMBER]: $*" >&2; }

pid=
stopping=
trap 'stopping=1; [ -z "$pid" ] || kill -TERM "$pid" 2>/dev/null || true' TERM INT

while [ -z "$stopping" ]; do
  # The CA to pin when joining: the one this member already holds in its trusted directory, else the
  # published one (first join, or a member whose state volume was lost).
  ca=
  if [ -s "$DIR/ca.pem" ]; then ca=$DIR/ca.pem; elif [ -s "$PUBLIC_DIR/ca.pem" ]; then ca=$PUBLIC_DIR/ca.pem; fi
  if [ "$MEMBER" = 1 ] && [ ! -e "$DIR/state" ] && [ -z "$ca" ]; then
    mode=bootstrap extra=--ha-bootstrap
    say "empty state and no published deployment CA: bootstrapping a new deployment"
  elif [ -z "$ca" ]; then
    mode=wait extra=
    say "no deployment CA published yet (member 1 publishes it once it has bootstrapped)"
  elif [ "$MEMBER" = 1 ] && [ -s "$RECOVERY_DIR/recover.json" ]; then
    # Consumed before use: tried once, whatever the outcome (the owner signs a new one to try again).
    cp "$RECOVERY_DIR/recover.json" /tmp/cdbp-ha-recover.json && rm -f "$RECOVERY_DIR/recover.json"
    mode=recover extra="--ha-ca $ca --ha-recover /tmp/cdbp-ha-recover.json"
    say "the owner's recovery statement is present (now consumed): reopening the deployment with --ha-recover"
  else
    mode=join extra="--ha-ca $ca"
    say "joining the deployment (needs the two other members running)"
  fi

  if [ "$mode" != wait ]; then
    rm -f "$DIR/cas-ready.json"
    # shellcheck disable=SC2086 # $extra: flags and paths without spaces
    node /app/bin/cdbp.js cas --dir "$DIR" "$@" $extra &
    pid=$!
    while [ ! -s "$DIR/cas-ready.json" ] && kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
    if [ -s "$DIR/cas-ready.json" ] && kill -0 "$pid" 2>/dev/null; then
      case $mode in
        bootstrap) say "serving: bootstrapped a new deployment" ;;
        recover) say "serving: the deployment reopened by the owner's statement (counters empty until re-anchored)" ;;
        *) say "serving: joined" ;;
      esac
      if [ "$MEMBER" = 1 ]; then
        cp "$DIR/ca.pem" "$PUBLIC_DIR/ca.pem.tmp" && chmod 0644 "$PUBLIC_DIR/ca.pem.tmp" && mv "$PUBLIC_DIR/ca.pem.tmp" "$PUBLIC_DIR/ca.pem"
        say "deployment CA published to $PUBLIC_DIR/ca.pem"
      fi
      # `wait` returns early when a signal arrives: keep waiting until the CAS has really stopped.
      set +e
      wait "$pid"; code=$?
      while kill -0 "$pid" 2>/dev/null; do wait "$pid"; code=$?; done
      exit $code
    fi
    code=0; wait "$pid" || code=$?
    pid=
    [ -z "$stopping" ] || exit 0
    # A bootstrap or a recovery that fails is not retried in a loop: Docker restarts the container.
    [ "$mode" = join ] || exit $(( code == 0 ? 1 : code ))
    say "could not join (exit $code). If ALL members stopped (a stop of the whole stack), none can rejoin: the deployment" \
      "stays closed until its owner reopens it (compose/README.md, ha-recover). Retrying in ${RETRY_SECONDS} s."
  fi
  sleep "$RETRY_SECONDS" & wait $! || true
done
exit 0
