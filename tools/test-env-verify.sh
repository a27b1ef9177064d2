#!/usr/bin/env bash
# tools/test-env-verify.sh [--bench] - end-to-end checks of the services
# started by tools/test-env.sh, with the real clients (Glance's and the
# short-token Keystone's too; a token's actual expiry is not waited for
# here, ~20 s: tests do that); --bench also
# measures token validation and 4 MiB Swift PUT/GET latency (median) and memory.
set -uo pipefail
STATE=${EKKO_OS_STATE:-/var/lib/ekko-openstack}
# shellcheck disable=SC1091
source "$STATE/env.sh"
export PATH=/usr/bin:/usr/sbin:$PATH       # Debian python/clients before any pyenv shim
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
fails=0 passes=0
ok()  { passes=$((passes+1)); echo "PASS $*"; }
bad() { fails=$((fails+1)); echo "FAIL $*"; }
check() { local d=$1; shift; if "$@" >"$TMP/out" 2>&1; then ok "$d"; else bad "$d"; sed 's/^/    /' "$TMP/out" | tail -5; fi; }

# token USER PASSWORD PROJECT -> prints X-Subject-Token
token() {
  curl -fsS -D - -o /dev/null -H 'Content-Type: application/json' "$EKKO_KEYSTONE_URL/v3/auth/tokens" -d \
  '{"auth":{"identity":{"methods":["password"],"password":{"user":{"name":"'"$1"'","domain":{"id":"default"},"password":"'"$2"'"}}},"scope":{"project":{"name":"'"$3"'","domain":{"id":"default"}}}}}' \
  | awk -F': ' 'tolower($1)=="x-subject-token"{print $2}' | tr -d '\r'
}
as_demo()   { env OS_USERNAME=demo OS_PASSWORD="$EKKO_DEMO_PASSWORD" OS_PROJECT_NAME=demo "$@"; }
as_alt()    { env OS_USERNAME=alt OS_PASSWORD="$EKKO_ALT_PASSWORD" OS_PROJECT_NAME=alt_demo "$@"; }
as_reader() { env OS_USERNAME=demo-reader OS_PASSWORD="$EKKO_READER_PASSWORD" OS_PROJECT_NAME=demo "$@"; }
not() { ! "$@"; }

# ---- Keystone (openstack CLI)
check "openstack token issue (demo)" as_demo openstack token issue -f value -c id
# shellcheck disable=SC2016  # expanded by the inner bash
check "openstack catalog list has object-store" bash -c 'as_demo() { env OS_USERNAME=demo OS_PASSWORD="$EKKO_DEMO_PASSWORD" OS_PROJECT_NAME=demo "$@"; }; as_demo openstack catalog list -f value -c Type | grep -qx object-store'

# ---- service-style token validation (keystonemiddleware does exactly this)
STOK=$(token ekko "$EKKO_SERVICE_PASSWORD" service)
UTOK=$(token demo "$EKKO_DEMO_PASSWORD" demo)
RTOK=$(token demo-reader "$EKKO_READER_PASSWORD" demo)
validate() { curl -fsS -H "X-Auth-Token: $STOK" -H "X-Subject-Token: $1" "$EKKO_KEYSTONE_URL/v3/auth/tokens?nocatalog"; }
check "GET /v3/auth/tokens (service token validates demo token: project+roles)" \
  bash -c "$(declare -f validate); STOK='$STOK' EKKO_KEYSTONE_URL=$EKKO_KEYSTONE_URL; validate '$UTOK' | jq -e '.token.project.id==\"$EKKO_DEMO_PROJECT_ID\" and ([.token.roles[].name]|index(\"member\")!=null)'"
code() { curl -sS -o /dev/null -w '%{http_code}' "$@"; }
check "invalid subject token -> 404" test "$(code -H "X-Auth-Token: $STOK" -H "X-Subject-Token: gAAAAABnotatoken" "$EKKO_KEYSTONE_URL/v3/auth/tokens")" = 404
check "non-service user cannot validate others' tokens -> 403" test "$(code -H "X-Auth-Token: $RTOK" -H "X-Subject-Token: $UTOK" "$EKKO_KEYSTONE_URL/v3/auth/tokens")" = 403

# ---- Swift (swift CLI)
head -c 1048576 /dev/urandom >"$TMP/obj.bin"
C=ekko-verify-$$
check "swift upload (demo)" as_demo swift upload "$C" "$TMP/obj.bin" --object-name obj.bin
check "swift download (demo) matches" bash -c "$(declare -f as_demo); as_demo swift download '$C' obj.bin -o '$TMP/dl.bin' && cmp '$TMP/obj.bin' '$TMP/dl.bin'"
DEMO_STORAGE=$EKKO_SWIFT_URL/v1/AUTH_$EKKO_DEMO_PROJECT_ID
check "other project's user cannot read (alt -> 403)" not as_alt swift --os-storage-url "$DEMO_STORAGE" download "$C" obj.bin -o "$TMP/alt.bin"
check "other project's user cannot list (alt)" not as_alt swift --os-storage-url "$DEMO_STORAGE" list "$C"
check "reader role can read" as_reader swift download "$C" obj.bin -o "$TMP/rd.bin"
check "reader role cannot write" not as_reader swift upload "$C" "$TMP/obj.bin" --object-name reader.bin
check "raw curl with token: 401 without, 200 with" bash -c "test \$(curl -s -o /dev/null -w '%{http_code}' '$DEMO_STORAGE/$C/obj.bin') = 401 && test \$(curl -s -o /dev/null -w '%{http_code}' -H 'X-Auth-Token: $UTOK' '$DEMO_STORAGE/$C/obj.bin') = 200"

# ---- MariaDB
check "MariaDB login over TCP + CREATE DATABASE" mariadb --no-defaults --protocol=tcp -h"$EKKO_DB_HOST" -P"$EKKO_DB_PORT" -u"$EKKO_DB_USER" -p"$EKKO_DB_PASSWORD" \
  -e "CREATE DATABASE IF NOT EXISTS ekko_verify; CREATE TABLE IF NOT EXISTS ekko_verify.t (id INT PRIMARY KEY); REPLACE INTO ekko_verify.t VALUES (1); DROP DATABASE ekko_verify;"

# ---- RabbitMQ (python3-amqp, a Debian dependency of oslo.messaging)
check "RabbitMQ publish + consume" /usr/bin/python3 - <<'EOF'
import os, amqp, urllib.parse as up
u = up.urlparse(os.environ['EKKO_AMQP_URL'])
c = amqp.Connection(host='%s:%d' % (u.hostname, u.port), userid=u.username, password=u.password, virtual_host='/')
c.connect(); ch = c.channel()
ch.queue_declare('ekko-verify', durable=False, auto_delete=False)
ch.basic_publish(amqp.Message('{"job":42}'), routing_key='ekko-verify')
for _ in range(50):
    m = ch.basic_get('ekko-verify', no_ack=True)
    if m: break
    import time; time.sleep(0.1)
assert m and m.body in ('{"job":42}', b'{"job":42}'), m
ch.queue_delete('ekko-verify'); c.close()
EOF

as_demo swift delete "$C" >/dev/null 2>&1 || true

# ---- short-token Keystone: its token expires in EKKO_KEYSTONE_SHORT_TOKEN_TTL
# seconds and the main Keystone validates it (shared keys)
# token_at KEYSTONE_URL USER PASSWORD PROJECT -> X-Subject-Token, body in $TMP/tok.json
token_at() {
  curl -fsS -D "$TMP/tok.hdr" -o "$TMP/tok.json" -H 'Content-Type: application/json' "$1/v3/auth/tokens" -d \
  '{"auth":{"identity":{"methods":["password"],"password":{"user":{"name":"'"$2"'","domain":{"id":"default"},"password":"'"$3"'"}}},"scope":{"project":{"name":"'"$4"'","domain":{"id":"default"}}}}}' \
  && awk -F': ' 'tolower($1)=="x-subject-token"{print $2}' "$TMP/tok.hdr" | tr -d '\r'
}
SHORT=$(token_at "$EKKO_KEYSTONE_SHORT_URL" demo "$EKKO_DEMO_PASSWORD" demo)
ttl=$(jq -r '.token | ((.expires_at|sub("\\.[0-9]+Z$";"Z")|fromdate) - (.issued_at|sub("\\.[0-9]+Z$";"Z")|fromdate))' "$TMP/tok.json" 2>/dev/null)
check "short Keystone: token lives ${EKKO_KEYSTONE_SHORT_TOKEN_TTL}s (got ${ttl}s)" test "$ttl" = "$EKKO_KEYSTONE_SHORT_TOKEN_TTL"
check "short Keystone's token validates at the main Keystone" \
  test "$(code -H "X-Auth-Token: $STOK" -H "X-Subject-Token: $SHORT" "$EKKO_KEYSTONE_URL/v3/auth/tokens?nocatalog")" = 200

# ---- Glance (openstack CLI, curl)
if [ -n "${EKKO_GLANCE_URL:-}" ]; then
  head -c 3145728 /dev/urandom >"$TMP/img.raw"
  I=ekko-verify-$$
  check "openstack image create --private --file (demo)" \
    as_demo openstack image create --private --disk-format raw --container-format bare --file "$TMP/img.raw" "$I"
  IID=$(as_demo openstack image show "$I" -f value -c id 2>/dev/null)
  check "openstack image save (demo) matches" bash -c "$(declare -f as_demo); as_demo openstack image save --file '$TMP/img.back' '$IID' && cmp '$TMP/img.raw' '$TMP/img.back'"
  check "image: owner = demo project, private, active, virtual_size" bash -c \
    "set -o pipefail; $(declare -f as_demo); as_demo openstack image show '$IID' -f json | jq -e '.owner==\"$EKKO_DEMO_PROJECT_ID\" and .visibility==\"private\" and .status==\"active\" and .virtual_size==3145728'"
  check "other project's user cannot see it (alt -> 404)" \
    test "$(code -H "X-Auth-Token: $(token alt "$EKKO_ALT_PASSWORD" alt_demo)" "$EKKO_GLANCE_URL/v2/images/$IID")" = 404
  check "raw curl: 401 without a token, 200 with the short Keystone's" bash -c \
    "test \$(curl -s -o /dev/null -w '%{http_code}' '$EKKO_GLANCE_URL/v2/images') = 401 && test \$(curl -s -o /dev/null -w '%{http_code}' -H 'X-Auth-Token: $SHORT' '$EKKO_GLANCE_URL/v2/images/$IID') = 200"
  check "image quota: Keystone registered limit image_size_total for glance" \
    bash -c "set -o pipefail; openstack registered limit list --service glance -f value -c 'Resource Name' | grep -qx image_size_total"
  as_demo openstack image delete "$IID" >/dev/null 2>&1 || true
else
  echo "SKIP Glance (EKKO_GLANCE_URL is empty: glance-api not installed or EKKO_OS_GLANCE=0)"
fi

# ---- libvirt (virsh; domains themselves: tests/integration/libvirt.rs)
if [ -n "${EKKO_LIBVIRT_URI:-}" ]; then
  check "virsh version ($EKKO_LIBVIRT_URI)" virsh -c "$EKKO_LIBVIRT_URI" version
  check "libvirt offers TCG domains (domcapabilities --virttype qemu)" \
    virsh -c "$EKKO_LIBVIRT_URI" domcapabilities --virttype qemu --arch x86_64
else
  echo "SKIP libvirt (EKKO_LIBVIRT_URI is empty: libvirt not installed or EKKO_OS_LIBVIRT=0)"
fi

if [ "${1:-}" = "--bench" ]; then
  median() { sort -n | awk '{a[NR]=$1} END{print (NR%2)? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
  N=${BENCH_N:-21}
  echo "--- bench (median of $N, seconds)"
  for i in $(seq "$N"); do curl -sS -o /dev/null -w '%{time_total}\n' -H "X-Auth-Token: $STOK" -H "X-Subject-Token: $UTOK" "$EKKO_KEYSTONE_URL/v3/auth/tokens?nocatalog"; done | median | sed 's/^/token validation (GET \/v3\/auth\/tokens?nocatalog): /'
  for i in $(seq 5); do /usr/bin/time -f '%e' bash -c "$(declare -f token); EKKO_KEYSTONE_URL=$EKKO_KEYSTONE_URL token demo '$EKKO_DEMO_PASSWORD' demo >/dev/null" 2>&1; done | median | sed 's/^/token issue (password, bcrypt): /'
  head -c 4194304 /dev/urandom >"$TMP/4m.bin"
  curl -fsS -o /dev/null -X PUT -H "X-Auth-Token: $UTOK" "$DEMO_STORAGE/bench"
  for i in $(seq "$N"); do curl -fsS -o /dev/null -w '%{time_total}\n' -T "$TMP/4m.bin" -H "X-Auth-Token: $UTOK" "$DEMO_STORAGE/bench/obj$i"; done | median | sed 's/^/4 MiB PUT: /'
  for i in $(seq "$N"); do curl -fsS -o /dev/null -w '%{time_total}\n' -H "X-Auth-Token: $UTOK" "$DEMO_STORAGE/bench/obj$i"; done | median | sed 's/^/4 MiB GET: /'
  for i in $(seq "$N"); do curl -fsS -o /dev/null -X DELETE -H "X-Auth-Token: $UTOK" "$DEMO_STORAGE/bench/obj$i"; done
  curl -fsS -o /dev/null -X DELETE -H "X-Auth-Token: $UTOK" "$DEMO_STORAGE/bench"
  # memory: every recorded daemon plus its descendants (+ epmd)
  pids=$(for f in "$STATE"/run/*.pid; do cat "$f"; echo; done; pgrep -x epmd)
  all=$(ps -eo pid=,ppid= | awk -v roots="$(echo "$pids" | tr '\n' ' ')" 'BEGIN{n=split(roots,r," "); for(i=1;i<=n;i++) keep[r[i]]=1} {p[$1]=$2} END{changed=1; while(changed){changed=0; for(k in p) if(!(k in keep) && (p[k] in keep)){keep[k]=1; changed=1}} for(k in keep) print k}')
  echo "--- memory (kB): name rss pss"
  for p in $all; do
    [ -r "/proc/$p/smaps_rollup" ] || continue
    printf '%s %s %s\n' "$(tr '\0' ' ' <"/proc/$p/cmdline" | cut -c1-40)" "$(awk '/^Rss:/{print $2}' "/proc/$p/smaps_rollup")" "$(awk '/^Pss:/{print $2}' "/proc/$p/smaps_rollup")"
  done | sort | awk '{rss+=$(NF-1); pss+=$NF; print} END{printf "TOTAL rss=%d MiB pss=%d MiB (%d processes)\n", rss/1024, pss/1024, NR}'
fi

echo "$passes passed, $fails failed"
[ "$fails" = 0 ]
