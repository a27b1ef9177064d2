#!/usr/bin/env bash
# API benchmark: authenticated `GET /v1/backups` (a page of 20 backups) on
# ekko-api with the real Keystone and MariaDB of the test environment,
# driven by wrk. Prints requests/s and latency percentiles; the target is at
# least 2,000 requests/s with p99 under 20 ms on a 2-core machine.
#
#   tools/test-env.sh && tools/bench-api.sh [seconds] [connections]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

secs=${1:-15}
conns=${2:-32}
env_file=${EKKO_OS_STATE:-/var/lib/ekko-openstack}/env.sh
[[ -r $env_file ]] || { echo "no $env_file: run tools/test-env.sh first" >&2; exit 1; }
set -a
# shellcheck disable=SC1090
. "$env_file"
set +a
command -v wrk >/dev/null || { echo "wrk is missing: tools/install-deps.sh installs it" >&2; exit 1; }

cargo build --release --quiet --bin ekko-api --bin ekko-manage

work=$(mktemp -d /tmp/ekko-bench-api.XXXXXX)
api_pid=
cleanup() {
    [[ -n $api_pid ]] && kill "$api_pid" 2>/dev/null && wait "$api_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

db=ekko_bench_api
sql() { mysql -h "$EKKO_DB_HOST" -P "$EKKO_DB_PORT" -u "$EKKO_DB_USER" -p"$EKKO_DB_PASSWORD" "$@"; }
sql -e "DROP DATABASE IF EXISTS $db; CREATE DATABASE $db"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$work/ekko.conf" <<EOF
[DEFAULT]
state_path = $work
[api]
bind_host = 127.0.0.1
bind_port = $port
[database]
connection = mysql://$EKKO_DB_USER:$EKKO_DB_PASSWORD@$EKKO_DB_HOST:$EKKO_DB_PORT/$db
max_pool_size = 16
[keystone_authtoken]
auth_url = $EKKO_KEYSTONE_AUTH_URL
username = $EKKO_SERVICE_USERNAME
password = $EKKO_SERVICE_PASSWORD
project_name = $EKKO_SERVICE_PROJECT
EOF
target/release/ekko-manage --config-file "$work/ekko.conf" db sync >/dev/null

# One instance with 20 finished backups in the demo project.
now=$(date -u +'%Y-%m-%d %H:%M:%S')
{
    echo "INSERT INTO instances (id, project_id, host, name, status, created_at, updated_at) VALUES ('bench-vm', '$EKKO_DEMO_PROJECT_ID', 'compute-1', 'bench', 'active', '$now', '$now');"
    for i in $(seq 1 20); do
        echo "INSERT INTO backups (id, project_id, user_id, instance_id, name, description, status, mode, kind, consistency, progress, logical_bytes, read_bytes, new_bytes, stored_bytes, protected, metadata, created_at, updated_at) VALUES (UUID(), '$EKKO_DEMO_PROJECT_ID', 'bench', 'bench-vm', 'nightly-$i', '', 'available', 'auto', 'incremental', 'crash', 100, 10737418240, 104857600, 52428800, 20971520, 0, '{}', '$now' - INTERVAL $i HOUR, '$now');"
    done
} | sql "$db"

RUST_LOG=warn target/release/ekko-api --config-file "$work/ekko.conf" 2>"$work/api.log" &
api_pid=$!
for _ in $(seq 1 100); do
    curl -fs "http://127.0.0.1:$port/" >/dev/null && break
    sleep 0.1
done

token=$(curl -fsi "$EKKO_KEYSTONE_AUTH_URL/auth/tokens?nocatalog" -H 'Content-Type: application/json' -d "{\"auth\": {\"identity\": {\"methods\": [\"password\"], \"password\": {\"user\": {\"name\": \"$EKKO_DEMO_USERNAME\", \"domain\": {\"name\": \"Default\"}, \"password\": \"$EKKO_DEMO_PASSWORD\"}}}, \"scope\": {\"project\": {\"name\": \"$EKKO_DEMO_PROJECT\", \"domain\": {\"name\": \"Default\"}}}}}" \
    | awk 'tolower($1) == "x-subject-token:" {print $2}' | tr -d '\r')
[[ -n $token ]] || { echo "no token from Keystone" >&2; exit 1; }
url="http://127.0.0.1:$port/v1/backups"
count=$(curl -fs -H "X-Auth-Token: $token" "$url" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["backups"]))')
echo "GET /v1/backups returns $count backups; wrk: $secs s, $conns connections, 2 threads"
wrk -t2 -c"$conns" -d"${secs}s" --latency -H "X-Auth-Token: $token" "$url" | tee "$work/wrk.txt"
rps=$(awk '/Requests\/sec/ {print $2}' "$work/wrk.txt")
p99=$(awk '$1 == "99%" {print $2}' "$work/wrk.txt")
non2xx=$(awk '/Non-2xx/ {print $NF}' "$work/wrk.txt")
echo
echo "ekko-api GET /v1/backups: ${rps} requests/s, p99 ${p99} (target >= 2000 requests/s, p99 < 20ms)${non2xx:+; NON-2XX: $non2xx}"
sql -e "DROP DATABASE IF EXISTS $db"
