#!/usr/bin/env bash
# tools/schemathesis.sh - property-based API testing: schemathesis (from
# PyPI, installed by tools/install-deps.sh into /opt/ekko-venv) generates
# requests from api-ref/openapi.json against a running ekko-api with the
# real Keystone and MariaDB, as the admin; fails on any 5xx, undocumented
# status, wrong content type or response that violates the schema.
#
#   tools/schemathesis.sh [max-examples]     (test environment running)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
EXAMPLES=${1:-40}
STATE=${EKKO_OS_STATE:-/var/lib/ekko-openstack}
set -a
# shellcheck source=/dev/null
. "$STATE/env.sh"
set +a
ST=${EKKO_SCHEMATHESIS:-/opt/ekko-venv/bin/schemathesis}
[ -x "$ST" ] || { echo "schemathesis missing: run tools/install-deps.sh" >&2; exit 1; }

work=$(mktemp -d)
db="ekko_st_$$"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  if [ -n "${api_pid:-}" ]; then kill "$api_pid" 2>/dev/null || true; fi
  mariadb -h "$EKKO_DB_HOST" -P "$EKKO_DB_PORT" -u "$EKKO_DB_USER" -p"$EKKO_DB_PASSWORD" \
    -e "DROP DATABASE IF EXISTS \`$db\`" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
mariadb -h "$EKKO_DB_HOST" -P "$EKKO_DB_PORT" -u "$EKKO_DB_USER" -p"$EKKO_DB_PASSWORD" \
  -e "CREATE DATABASE \`$db\` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
cat >"$work/ekko.conf" <<CONF
[DEFAULT]
state_path = $work/state
transport_url = memory://
[api]
bind_host = 127.0.0.1
bind_port = $port
[database]
connection = mysql+pymysql://$EKKO_DB_USER:$EKKO_DB_PASSWORD@$EKKO_DB_HOST:$EKKO_DB_PORT/$db
[keystone_authtoken]
auth_url = $EKKO_KEYSTONE_AUTH_URL
username = $EKKO_SERVICE_USERNAME
password = $EKKO_SERVICE_PASSWORD
project_name = $EKKO_SERVICE_PROJECT
CONF
cargo build -q --bin ekko-api --bin ekko-manage
target/debug/ekko-manage --config-file "$work/ekko.conf" db sync >/dev/null
target/debug/ekko-api --config-file "$work/ekko.conf" 2>"$work/api.log" &
api_pid=$!
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$port/" >/dev/null && break
  sleep 0.2
done
token=$(curl -fsi -H 'Content-Type: application/json' \
  -d "{\"auth\":{\"identity\":{\"methods\":[\"password\"],\"password\":{\"user\":{\"name\":\"$OS_USERNAME\",\"domain\":{\"name\":\"Default\"},\"password\":\"$OS_PASSWORD\"}}},\"scope\":{\"project\":{\"name\":\"$OS_PROJECT_NAME\",\"domain\":{\"name\":\"Default\"}}}}}" \
  "$EKKO_KEYSTONE_AUTH_URL/auth/tokens?nocatalog" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-subject-token"{print $2}')
[ -n "$token" ] || { echo "no admin token" >&2; exit 1; }
status=0
"$ST" run api-ref/openapi.json --url "http://127.0.0.1:$port" \
  -H "X-Auth-Token: $token" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --max-examples "$EXAMPLES" --seed 1 --no-color --warnings off || status=$?
if [ "$status" -ne 0 ]; then
  echo "--- ekko-api log (last 40 lines)" >&2
  grep -E "status=5[0-9][0-9]|ERROR|panicked" "$work/api.log" | tail -20 >&2
fi
exit "$status"
