#!/bin/bash
# Entry point of the MariaDB container. MariaDB may only start once the attested proxy (same network
# namespace) has passed attestation AND the freshness check: only then does it serve keys on
# https://127.0.0.1:8200 and write, on the tmpfs both containers share,
#   /run/cdbp/keyring-ca.pem   the CA the plugin verifies the keyring with (public)
#   /run/cdbp/keyring-token    the per-start keyring token (0600, never on a disk)
# So: wait for both, pass the token as VAULT_TOKEN (the plugin's only token source here; it is in no
# file, option or command line), initialise the datadir on first start, run mariadbd. mariadbd lives
# only as long as the proxy instance that keyed it (see the supervision loop below).
set -euo pipefail

RUN_DIR=/run/cdbp
TOKEN_FILE=${CDBP_KEYRING_TOKEN_FILE:-$RUN_DIR/keyring-token}
CA_FILE=$RUN_DIR/keyring-ca.pem
VOLATILE=/run/cdbp-volatile
DEFAULTS=/etc/cdbp/server.cnf
DATADIR=$(awk -F= '$1=="datadir"{print $2}' "$DEFAULTS")
WAIT_SECONDS=${CDBP_TOKEN_WAIT_SECONDS:-0}   # 0 = wait for the proxy as long as it takes
PROXY_OPS_PORT=${CDBP_PROXY_OPS_PORT:-9090}

say() { echo "cdbp-mariadb: $*" >&2; }

volatile_ok() {
  # tmpfs (0x01021994) or ramfs (0x858458f6): plaintext MariaDB cannot encrypt must not reach a disk.
  local t; t=$(stat -f -c %t "$1")
  [ "$t" = "1021994" ] || [ "$t" = "858458f6" ]
}

for d in "$RUN_DIR" "$VOLATILE"; do
  if ! volatile_ok "$d"; then say "$d is not memory-backed (tmpfs); refusing to start"; exit 1; fi
done
mkdir -p -m 0700 "$VOLATILE/tmp" "$VOLATILE/aria-log" "$VOLATILE/logs" "$VOLATILE/files"

# aria_log_control holds the Aria UUID: it lives in the datadir, the tmpfs Aria log dir links to it. A
# new UUID (control file lost with the tmpfs at a container restart) makes Aria zerofill every table as
# "moved", which MariaDB 10.11 gets wrong for encrypted Aria tables (mysql.proc fails to decrypt; issue 21
# item 7, docs/KEYRING.md). Same logic as pinAriaControlFile in src/db/mariadb-server.ts.
pin_aria_control() {
  local link="$VOLATILE/aria-log/aria_log_control" target="$DATADIR/aria_log_control"
  if [ -f "$link" ] && [ ! -L "$link" ]; then
    cp "$link" "$target" && sync "$target" && rm -f "$link"
  fi
  if [ -f "$target" ] && [ "$(readlink "$link" 2>/dev/null)" != "$target" ]; then
    ln -sfn "$target" "$link"
  fi
}

mariadbd_pid=
stopping=0
on_signal() {
  stopping=1
  if [ -n "$mariadbd_pid" ]; then kill -TERM "$mariadbd_pid" 2>/dev/null || true; fi
}
trap on_signal TERM INT

read_token() { tr -d '\n' < "$TOKEN_FILE" 2>/dev/null || true; }

# Waits for a keyring token different from $1 (a token of a proxy instance that is gone is useless).
wait_for_new_token() {
  local old=$1 waited=0
  say "waiting for the proxy to attest, verify freshness and start the keyring"
  while :; do
    [ "$stopping" = 1 ] && exit 0
    if [ -s "$TOKEN_FILE" ] && [ -s "$CA_FILE" ] && [ "$(read_token)" != "$old" ]; then return 0; fi
    if [ "$WAIT_SECONDS" -gt 0 ] && [ "$waited" -ge "$WAIT_SECONDS" ]; then
      say "no keyring token after ${WAIT_SECONDS}s"; exit 1
    fi
    sleep 1 & wait $! || true
    waited=$((waited + 1))
  done
}

# The proxy (same network namespace) is alive while its ops port accepts connections.
proxy_alive() { (exec 3<>"/dev/tcp/127.0.0.1/$PROXY_OPS_PORT") 2>/dev/null; }

stop_mariadbd() {
  kill -TERM "$mariadbd_pid" 2>/dev/null || true
  # A signal interrupts `wait` before mariadbd is gone: keep waiting until it has really exited.
  set +e
  wait "$mariadbd_pid"; code=$?
  while kill -0 "$mariadbd_pid" 2>/dev/null; do wait "$mariadbd_pid"; code=$?; done
  set -e
  mariadbd_pid=
}

token=
while :; do
  wait_for_new_token "$token"
  token=$(read_token)
  export VAULT_TOKEN=$token

  if [ ! -d "$DATADIR/mysql" ]; then
    say "first start: initialising the (encrypted) datadir"
    # Into a scratch dir first, renamed when complete: a half-initialised datadir is never mistaken for one.
    rm -rf "$DATADIR.init"
    mkdir -p -m 0700 "$DATADIR.init"
    mariadb-install-db --defaults-file="$DEFAULTS" --datadir="$DATADIR.init" \
      --auth-root-authentication-method=socket --skip-test-db --user=cdbp >"$VOLATILE/install-db.log" 2>&1 \
      || { say "mariadb-install-db failed:"; tail -n 30 "$VOLATILE/install-db.log" >&2; exit 1; }
    mv "$DATADIR.init" "$DATADIR"
  fi
  pin_aria_control

  mariadbd --defaults-file="$DEFAULTS" &
  mariadbd_pid=$!
  say "mariadbd started (pid $mariadbd_pid)"
  # Supervise. mariadbd runs only while the proxy instance that issued its token runs: when the proxy
  # stops (its ops port closes) or restarts (new token), mariadbd is stopped at once, before the new
  # proxy instance could mistake the old server for the one it is about to key, and started again with
  # the new token. Without its proxy MariaDB has no key source: fail closed.
  reason=
  misses=0
  while [ -z "$reason" ]; do
    sleep 0.25 & wait $! || true
    if [ "$stopping" = 1 ]; then reason=signal
    elif ! kill -0 "$mariadbd_pid" 2>/dev/null; then reason=exited
    elif [ "$(read_token)" != "$token" ]; then reason="the proxy issued a new keyring token"
    elif ! proxy_alive; then
      misses=$((misses + 1))
      [ "$misses" -ge 2 ] && reason="the proxy stopped"
    else misses=0
    fi
  done
  if [ "$reason" = exited ]; then
    set +e; wait "$mariadbd_pid"; code=$?; set -e
    say "mariadbd exited (code $code)"; exit "$code"
  fi
  [ "$reason" != signal ] && say "$reason: stopping mariadbd"
  stop_mariadbd
  if [ "$stopping" = 1 ]; then say "stopped"; exit 0; fi
done
