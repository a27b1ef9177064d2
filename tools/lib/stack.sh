# shellcheck shell=bash
# tools/lib/stack.sh - source me: a whole Ekko on loopback for the tests that
# drive it from outside (the openstack CLI plugin test, the api-ref sample
# capture). Real Keystone and MariaDB from tools/test-env.sh; `ekko
# all-in-one` (API, conductor, worker and retention in one process, in-process
# queue) with a local store; a qemu-storage-daemon playing instance
# `$STACK_INSTANCE` of the demo project, its 64 MiB qcow2 disk written with a
# known pattern.
#
#   . tools/lib/stack.sh
#   stack_start [extra ekko.conf lines]   # sets STACK_URL, STACK_DIR, ...
#   ...
#   stack_stop                            # also from an EXIT trap
#
# STACK_MAX_CONCURRENT sets the host's jobs at once (default 2).
#
# Needs: the test environment (/var/lib/ekko-openstack/env.sh), the binaries
# in target/debug (built with cargo unless EKKO_NO_BUILD=1).

STACK_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STACK_INSTANCE=${STACK_INSTANCE:-11111111-2222-4333-8444-555555555555}

stack_log() { printf '[ekko stack] %s\n' "$*" >&2; }

stack_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# stack_token USER PASSWORD PROJECT: a project-scoped Keystone token.
stack_token() {
  curl -fsi -H 'Content-Type: application/json' \
    -d "{\"auth\":{\"identity\":{\"methods\":[\"password\"],\"password\":{\"user\":{\"name\":\"$1\",\"domain\":{\"name\":\"Default\"},\"password\":\"$2\"}}},\"scope\":{\"project\":{\"name\":\"$3\",\"domain\":{\"name\":\"Default\"}}}}}" \
    "$EKKO_KEYSTONE_AUTH_URL/auth/tokens?nocatalog" | tr -d '\r' |
    awk -F': ' 'tolower($1)=="x-subject-token"{print $2}'
}

stack_mysql() {
  mariadb -h "$EKKO_DB_HOST" -P "$EKKO_DB_PORT" -u "$EKKO_DB_USER" -p"$EKKO_DB_PASSWORD" "$@"
}

stack_start() {
  local state=${EKKO_OS_STATE:-/var/lib/ekko-openstack}
  set -a
  # shellcheck source=/dev/null
  . "$state/env.sh"
  set +a
  STACK_DIR=$(mktemp -d /tmp/ekko-stack.XXXXXX)
  STACK_DB="ekko_stack_$$_$RANDOM"
  STACK_PORT=${STACK_PORT:-$(stack_free_port)}
  STACK_URL="http://127.0.0.1:$STACK_PORT"
  STACK_RESTORE_DIR="$STACK_DIR/restores"
  mkdir -p "$STACK_DIR/state" "$STACK_RESTORE_DIR"

  if [ "${EKKO_NO_BUILD:-0}" != 1 ]; then
    (cd "$STACK_ROOT" && cargo build -q --bin ekko --bin ekko-manage)
  fi
  STACK_BIN="$STACK_ROOT/target/debug"

  # The instance: a qcow2 disk with 8 MiB of a known pattern at 1 MiB.
  STACK_DISK="$STACK_DIR/disk0.qcow2"
  qemu-img create -q -f qcow2 "$STACK_DISK" 64M
  qemu-io -f qcow2 -c 'write -P 0x5a 1M 8M' -c 'write -P 0xc3 40M 1M' "$STACK_DISK" >/dev/null
  STACK_QMP="$STACK_DIR/qmp.sock"
  qemu-storage-daemon \
    --blockdev "driver=file,node-name=file0,filename=$STACK_DISK" \
    --blockdev driver=qcow2,node-name=disk0,file=file0 \
    --chardev "socket,path=$STACK_QMP,server=on,wait=off,id=qmp0" \
    --monitor chardev=qmp0 \
    --pidfile "$STACK_DIR/qsd.pid" --daemonize
  STACK_QSD_PID=$(cat "$STACK_DIR/qsd.pid")

  stack_mysql -e "CREATE DATABASE \`$STACK_DB\` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
  STACK_CONF="$STACK_DIR/ekko.conf"
  cat >"$STACK_CONF" <<CONF
[DEFAULT]
state_path = $STACK_DIR/state
transport_url = memory://
host = stack-host
[api]
bind_host = 127.0.0.1
bind_port = $STACK_PORT
[database]
connection = mysql+pymysql://$EKKO_DB_USER:$EKKO_DB_PASSWORD@$EKKO_DB_HOST:$EKKO_DB_PORT/$STACK_DB
[keystone_authtoken]
auth_url = $EKKO_KEYSTONE_AUTH_URL
username = $EKKO_SERVICE_USERNAME
password = $EKKO_SERVICE_PASSWORD
project_name = $EKKO_SERVICE_PROJECT
[backup]
restore_dir = $STACK_RESTORE_DIR
heartbeat_interval = 1
max_concurrent_backups = ${STACK_MAX_CONCURRENT:-2}
instances = $STACK_INSTANCE:$EKKO_DEMO_PROJECT_ID:$STACK_QMP
CONF
  if [ $# -gt 0 ]; then printf '%s\n' "$@" >>"$STACK_CONF"; fi
  "$STACK_BIN/ekko-manage" --config-file "$STACK_CONF" db sync >/dev/null
  "$STACK_BIN/ekko" --config-file "$STACK_CONF" all-in-one 2>"$STACK_DIR/ekko.log" &
  STACK_PID=$!
  local i
  for i in $(seq 150); do
    curl -fs "$STACK_URL/" >/dev/null && break
    [ "$i" = 150 ] && { stack_log "ekko all-in-one did not answer; log:"; tail -20 "$STACK_DIR/ekko.log" >&2; return 1; }
    sleep 0.2
  done
  # The worker's first heartbeat brings the instance into the catalog.
  local admin
  admin=$(stack_token "$OS_USERNAME" "$OS_PASSWORD" "$OS_PROJECT_NAME")
  for i in $(seq 100); do
    curl -fs -H "X-Auth-Token: $admin" "$STACK_URL/v1/instances?all_projects=true" | grep -q "$STACK_INSTANCE" && break
    [ "$i" = 100 ] && { stack_log "instance never reported; log:"; tail -20 "$STACK_DIR/ekko.log" >&2; return 1; }
    sleep 0.2
  done
  stack_log "ekko at $STACK_URL (db $STACK_DB, dir $STACK_DIR)"
}

stack_stop() {
  if [ -n "${STACK_PID:-}" ]; then kill "$STACK_PID" 2>/dev/null || true; wait "$STACK_PID" 2>/dev/null || true; fi
  if [ -n "${STACK_QSD_PID:-}" ]; then kill "$STACK_QSD_PID" 2>/dev/null || true; fi
  if [ -n "${STACK_DB:-}" ]; then stack_mysql -e "DROP DATABASE IF EXISTS \`$STACK_DB\`" 2>/dev/null || true; fi
  if [ -n "${STACK_DIR:-}" ] && [ "${EKKO_KEEP_STACK:-0}" != 1 ]; then rm -rf "$STACK_DIR"; fi
  STACK_PID='' STACK_QSD_PID='' STACK_DB=''
}
