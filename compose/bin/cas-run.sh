#!/bin/sh
# Runs the CAS and, once it listens, publishes its PUBLIC root CA (ca.pem) to a volume of its own, so the
# proxy and the owner's setup step can pin it without mounting the CAS's trusted state directory.
set -eu
DIR=${CDBP_CAS_DIR:-/var/lib/cdbp-cas}
PUBLIC=${CDBP_CAS_PUBLIC_DIR:-/srv/cas-public}
rm -f "$PUBLIC/ca.pem"
node /app/bin/cdbp.js cas --dir "$DIR" "$@" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true' TERM INT
while [ ! -s "$DIR/cas-ready.json" ]; do
  kill -0 $pid 2>/dev/null || { wait $pid || exit $?; exit 1; }
  sleep 0.2
done
cp "$DIR/ca.pem" "$PUBLIC/ca.pem.tmp" && chmod 0644 "$PUBLIC/ca.pem.tmp" && mv "$PUBLIC/ca.pem.tmp" "$PUBLIC/ca.pem"
echo "cdbp-cas: root CA published to $PUBLIC/ca.pem" >&2
# `wait` returns early when a signal arrives: keep waiting until the CAS has really stopped.
set +e
wait $pid; code=$?
while kill -0 $pid 2>/dev/null; do wait $pid; code=$?; done
exit $code
