#!/usr/bin/env bash
# tools/test-env-stop.sh [--purge] - stop what tools/test-env.sh started (by
# the PIDs it recorded, never by name). A MariaDB or RabbitMQ that test-env.sh
# found already running (not its own) is left alone. --purge also deletes the
# state dir (databases, rings, objects, images, keys) for a clean next start;
# the `ekko`/`keystone`/`glance` databases on such a foreign MariaDB are kept.
# libvirtd and virtlogd are stopped only if test-env.sh started them.
set -uo pipefail
STATE=${EKKO_OS_STATE:-/var/lib/ekko-openstack}
RUN=$STATE/run
EPMD_PORT=${EKKO_OS_EPMD_PORT:-4369}

log() { echo "[ekko test-env-stop] $*" >&2; }

# stop NAME PATTERN: TERM the recorded pid if its cmdline matches, wait, then KILL.
stop() {
  local f=$RUN/$1.pid pid
  [ -s "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$2"; then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then log "$1 ($pid) did not stop in 30s, sending KILL"; kill -KILL "$pid" 2>/dev/null; fi
    log "stopped $1 ($pid)"
  fi
  rm -f "$f"
}

if [ -d "$RUN" ]; then
  stop swift-proxy swift-proxy-server
  stop swift-object swift-object-server
  stop swift-container swift-container-server
  stop swift-account swift-account-server
  stop glance-api glance-api    # the parent takes its worker down
  stop keystone-short "keystone-short uWSGI master"
  stop keystone "keystone uWSGI master"  # --die-on-term: master takes its workers down
  stop rabbitmq beam
  stop memcached memcached
  stop mariadb mariadbd          # SIGTERM = clean InnoDB shutdown
  # libvirt: domains keep running without libvirtd (QEMU is not its child):
  # name the ones left behind by a test, but leave them alone.
  if [ -s "$RUN/libvirtd.pid" ] && command -v virsh >/dev/null; then
    left=$(timeout 10 virsh -c qemu:///system list --name 2>/dev/null | grep -v '^$' | tr '\n' ' ')
    [ -z "$left" ] || log "libvirt domains still running (not stopped): $left"
  fi
  stop libvirtd libvirtd
  stop virtlogd virtlogd
fi
# Swift's loop-mounted XFS device (after the servers are gone)
if mountpoint -q "$STATE/swift/node/d1" 2>/dev/null; then
  umount "$STATE/swift/node/d1" && log "unmounted $STATE/swift/node/d1"
fi
# epmd: only if test-env.sh started it (marker $RUN/epmd.started; bound to
# 127.0.0.1). -kill refuses while any Erlang node is still registered, so it
# cannot hit someone else's node either.
if [ -e "$RUN/epmd.started" ] && command -v epmd >/dev/null && ERL_EPMD_PORT=$EPMD_PORT epmd -names >/dev/null 2>&1; then
  if ERL_EPMD_PORT=$EPMD_PORT epmd -names 2>/dev/null | grep -q '^name '; then
    log "epmd still has registered nodes; leaving it running"
  else
    ERL_EPMD_PORT=$EPMD_PORT epmd -kill >/dev/null 2>&1 && log "stopped epmd"
    rm -f "$RUN/epmd.started"
  fi
fi

if [ "${1:-}" = "--purge" ]; then
  rm -rf "$STATE" && log "removed $STATE"
fi
exit 0
