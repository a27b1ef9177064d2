#!/usr/bin/env bash
# tools/devstack-test.sh - run the devstack plugin (devstack/settings,
# devstack/plugin.sh, devstack/lib/ekko) offline against stand-ins for the
# devstack helpers it calls, and check what it does.
#
#   EKKO_BIN=target/debug tools/devstack-test.sh
#
# Needs the Ekko binaries in $EKKO_BIN (default target/debug; CI builds them
# first), bash and python3. Nothing is written outside a temporary directory:
# the stand-ins record their calls instead of talking to Keystone, MySQL,
# RabbitMQ or systemd, `sudo` runs the command as the current user, and a
# stand-in `cargo` "builds" by writing wrappers around $EKKO_BIN's binaries.
#
# Scenarios (each runs every phase in turn: stack pre-install, install,
# post-config, extra, test-config, then unstack and clean):
#   aio       single node with Swift: ekko-api, ekko-backup, ekko-retention
#   ctl-local controller without Swift or ekko-backup, EKKO_SKIP_BUILD=True
#   compute   compute node: only ekko-backup, no database, Swift elsewhere
#   rustup    no cargo on PATH: the install phase installs it with rustup
#
# Checks: the ekko.conf written (sections and values) and that
# `ekko-manage --config-file <it> config check` accepts it (Ekko rejects
# unknown sections and options, so this proves the plugin writes only real
# options; a planted bogus option must make it fail); Keystone registration
# (service type instance-backup, endpoint URL, service user); database
# creation and a real `ekko-manage db sync`; run_process/stop_process command
# lines per enabled service; clean removes what the plugin created.
# Exits non-zero if any check fails.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

EKKO_BIN=${EKKO_BIN:-target/debug}
case $EKKO_BIN in /*) ;; *) EKKO_BIN="$ROOT/$EKKO_BIN" ;; esac
BINARIES=(ekko ekko-api ekko-backup ekko-retention ekko-manage ekko-status)
for b in "${BINARIES[@]}"; do
    [ -x "$EKKO_BIN/$b" ] || { echo "devstack-test: $EKKO_BIN/$b missing (build first, or set EKKO_BIN)" >&2; exit 2; }
done
export RUST_BACKTRACE=0 NO_COLOR=1

TMP=$(mktemp -d "${TMPDIR:-/tmp}/ekko-devstack-test.XXXXXX")
if [ "${EKKO_KEEP_TMP:-0}" = 1 ]; then
    echo "devstack-test: keeping $TMP"
else
    trap 'rm -rf "$TMP"' EXIT
fi
: >"$TMP/failures"
: >"$TMP/passes"

# ------------------------------------------------------------------ checks
SCENARIO=none
pass() { echo "ok   [$SCENARIO] $*"; echo x >>"$TMP/passes"; }
fail() { echo "FAIL [$SCENARIO] $*"; echo "[$SCENARIO] $*" >>"$TMP/failures"; }
# check DESCRIPTION COMMAND...: the check passes when COMMAND succeeds.
check() {
    local desc=$1
    shift
    if "$@" >/dev/null 2>&1; then pass "$desc"; else fail "$desc"; fi
}
# check_not DESCRIPTION COMMAND...: the check passes when COMMAND fails.
check_not() {
    local desc=$1
    shift
    if "$@" >/dev/null 2>&1; then fail "$desc"; else pass "$desc"; fi
}

# A small INI editor with devstack's iniset semantics: a new option goes
# right after its section's header, a new section at the end of the file,
# an existing option is replaced in place; lines are written `key = value`.
cat >"$TMP/ini.py" <<'PY'
import re, sys

HEADER = re.compile(r"^\[([^\]]+)\]\s*$")

def read(path):
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []

def bounds(lines, section):
    start = next((i for i, l in enumerate(lines)
                  if (m := HEADER.match(l)) and m.group(1) == section), None)
    if start is None:
        return None, None
    end = next((j for j in range(start + 1, len(lines)) if HEADER.match(lines[j])), len(lines))
    return start, end

def find(lines, start, end, key):
    pat = re.compile(r"^\s*" + re.escape(key) + r"\s*=")
    return next((j for j in range(start + 1, end) if pat.match(lines[j])), None)

cmd, path = sys.argv[1], sys.argv[2]
lines = read(path)
if cmd == "set":
    section, key, value = sys.argv[3:6]
    start, end = bounds(lines, section)
    if start is None:
        if lines and lines[-1] != "":
            lines.append("")
        lines += [f"[{section}]", f"{key} = {value}"]
    else:
        j = find(lines, start, end, key)
        if j is None:
            lines.insert(start + 1, f"{key} = {value}")
        else:
            lines[j] = f"{key} = {value}"
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
elif cmd == "get":
    section, key = sys.argv[3:5]
    start, end = bounds(lines, section)
    j = None if start is None else find(lines, start, end, key)
    if j is None:
        sys.exit(1)
    print(lines[j].split("=", 1)[1].strip())
elif cmd == "sections":
    for l in lines:
        if m := HEADER.match(l):
            print(m.group(1))
else:
    sys.exit(f"unknown command {cmd}")
PY

ini_get() { python3 "$TMP/ini.py" get "$@"; }
# ini_is FILE SECTION KEY VALUE
ini_is() { [ "$(ini_get "$1" "$2" "$3")" = "$4" ]; }
has_section() { python3 "$TMP/ini.py" sections "$1" | grep -Fxq "$2"; }
# called LINE: the stand-ins recorded exactly this call.
called() { grep -Fxq -- "$1" "$EKKO_TEST_LOG"; }
called_matching() { grep -Eq -- "$1" "$EKKO_TEST_LOG"; }
calls_of() { grep -c -- "^$1 " "$EKKO_TEST_LOG" || true; }

# ------------------------------------------------- stand-ins for devstack
# Every stand-in that stands for an action records `name arg|arg|…`.
record() {
    local name=$1
    shift
    local IFS='|'
    printf '%s %s\n' "$name" "$*" >>"$EKKO_TEST_LOG"
}
iniset() {
    if [ "$1" = "-sudo" ]; then shift; fi
    record iniset "$@"
    python3 "$TMP/ini.py" set "$1" "$2" "$3" "$4"
}
trueorfalse() {
    local default=$1 name=$2 value
    value=${!name:-$default}
    case ${value,,} in
        1 | yes | true | on) echo True ;;
        0 | no | false | off) echo False ;;
        *) echo "$default" ;;
    esac
}
enable_service() {
    local s
    for s in "$@"; do
        case ",$ENABLED_SERVICES," in *",$s,"*) ;; *) ENABLED_SERVICES="${ENABLED_SERVICES:+$ENABLED_SERVICES,}$s" ;; esac
    done
}
# True if any of the named services is enabled; `swift` stands for s-*.
is_service_enabled() {
    local s
    for s in "$@"; do
        case ",$ENABLED_SERVICES," in *",$s,"*) return 0 ;; esac
        if [ "$s" = swift ] && [[ ",$ENABLED_SERVICES," == *,s-* ]]; then return 0; fi
    done
    return 1
}
die() {
    local line=$1
    shift
    echo "die (line $line): $*" >&2
    record die "$@"
    exit 1
}
echo_summary() { echo "summary: $*"; }
sudo() { "$@"; }
pip_install() { record pip_install "$@"; }
get_transport_url() { echo "rabbit://stackrabbit:secretrabbit@10.0.0.5:5672/"; }
database_connection_url() {
    record database_connection_url "$@"
    echo "mysql+pymysql://root:secretdb@127.0.0.1/$1?charset=utf8&plugin=dbcounter"
}
recreate_database() { record recreate_database "$@"; }
create_service_user() { record create_service_user "$@"; }
get_or_add_user_project_role() { record get_or_add_user_project_role "$@"; }
get_or_create_service() { record get_or_create_service "$@"; echo 5e7c0de5; }
get_or_create_endpoint() { record get_or_create_endpoint "$@"; echo e0d9017; }
run_process() { record run_process "$@"; }
wait_for_service() { record wait_for_service "$@"; }
# lib/apache's: sites go under the scenario's etc/apache2.
apache_site_config_for() { mkdir -p "$S/etc/apache2/sites-available"; echo "$S/etc/apache2/sites-available/$1.conf"; }
enable_apache_mod() { record enable_apache_mod "$@"; }
enable_apache_site() { record enable_apache_site "$@"; }
disable_apache_site() { record disable_apache_site "$@"; }
restart_apache_server() { record restart_apache_server "$@"; }
rabbitmqctl() { record rabbitmqctl "$@"; }
stop_process() { record stop_process "$@"; }
mysql() { record mysql "$@"; }

# Wrappers standing for the release binaries: record, then run the real one.
write_wrappers() {
    local dir=$1 b
    mkdir -p "$dir"
    for b in "${BINARIES[@]}"; do
        # shellcheck disable=SC2016 # $* and $EKKO_TEST_LOG are the wrapper's
        printf '#!/usr/bin/env bash\nprintf "exec %s %%s\\n" "$*" >>"$EKKO_TEST_LOG"\nexec "%s/%s" "$@"\n' \
            "$b" "$EKKO_BIN" "$b" >"$dir/$b"
        chmod 0755 "$dir/$b"
    done
}

# The stand-in cargo: records its call and "builds" wrappers.
mkdir -p "$TMP/fakebin"
cat >"$TMP/fakebin/cargo" <<'SH'
#!/usr/bin/env bash
set -euo pipefail
printf 'cargo %s|cwd=%s|CARGO_TARGET_DIR=%s\n' "$*" "$PWD" "${CARGO_TARGET_DIR:-}" >>"$EKKO_TEST_LOG"
for b in ekko ekko-api ekko-backup ekko-retention ekko-manage ekko-status; do
    mkdir -p "$CARGO_TARGET_DIR/release"
    printf '#!/usr/bin/env bash\nprintf "exec %s %%s\\n" "$*" >>"$EKKO_TEST_LOG"\nexec "%s/%s" "$@"\n' \
        "$b" "$EKKO_TEST_REAL_BIN" "$b" >"$CARGO_TARGET_DIR/release/$b"
    chmod 0755 "$CARGO_TARGET_DIR/release/$b"
done
SH
chmod 0755 "$TMP/fakebin/cargo"
# The stand-in curl: records (nothing listens at the scenarios' addresses).
# shellcheck disable=SC2016 # $* and $EKKO_TEST_LOG are the stand-in's
printf '#!/usr/bin/env bash\nprintf "curl %%s\\n" "$*" >>"$EKKO_TEST_LOG"\n' >"$TMP/fakebin/curl"
chmod 0755 "$TMP/fakebin/curl"
export EKKO_TEST_REAL_BIN=$EKKO_BIN

# --------------------------------------------------------------- scenarios
# new_scenario NAME: a fresh devstack-like environment under $TMP/NAME.
new_scenario() {
    SCENARIO=$1
    S="$TMP/$1"
    mkdir -p "$S"
    export EKKO_TEST_LOG="$S/calls.log"
    : >"$EKKO_TEST_LOG"
    # Clear what a previous scenario set.
    unset EKKO_ENABLED_SERVICES EKKO_SKIP_BUILD EKKO_STORE_BACKEND EKKO_BACKUP_USER \
        EKKO_BACKUP_INSTANCES EKKO_CLIENT_DIR EKKO__DATABASE__CONNECTION \
        EKKO_ENCRYPTION EKKO_MASTER_KEY_FILE EKKO_HOST_KEY_FILE EKKO_RESTORE_HOST \
        EKKO_HOST_TRANSPORT_URL EKKO_HOST_BUS_USERS EKKO_CONTROLLER_TRANSPORT_URL \
        EKKO_CONTROLLER_BUS_USER EKKO_CONTROLLER_BUS_PASSWORD EKKO_USE_APACHE \
        EKKO_SERVICE_LISTEN_ADDRESS
    # devstack's globals the plugin reads.
    export DEST="$S/opt/stack" DATA_DIR="$S/opt/stack/data" STACK_USER
    STACK_USER=$(id -un)
    export SERVICE_HOST=10.0.0.5 SERVICE_PROTOCOL=http SERVICE_LISTEN_ADDRESS=0.0.0.0 SERVICE_TIMEOUT=60
    export KEYSTONE_SERVICE_URI=http://10.0.0.5/identity REGION_NAME=RegionOne
    export SERVICE_PASSWORD=secretservice SERVICE_DOMAIN_NAME=Default SERVICE_PROJECT_NAME=service
    export MEMCACHE_SERVERS=localhost:11211 API_WORKERS=2
    export DATABASE_TYPE=mysql DATABASE_USER=root DATABASE_PASSWORD=secretdb DATABASE_HOST=127.0.0.1
    # The plugin's knobs: everything inside $S.
    export EKKO_DIR=$ROOT
    export EKKO_CONF_DIR="$S/etc/ekko" EKKO_BIN_DIR="$S/usr/local/bin"
    export EKKO_CARGO_TARGET_DIR="$S/target" EKKO_HOST="$1-host"
    CONF="$EKKO_CONF_DIR/ekko.conf"
    STATE="$DATA_DIR/ekko"
    PATH_FOR_PHASES="$TMP/fakebin:$PATH"
    ENABLED_SERVICES=""
}

# run_phase ARGS...: source settings and plugin.sh ARGS in a subshell, as
# devstack does (errexit on, like stack.sh); its output goes to
# $S/phase.log and is appended to $S/devstack.log; returns its status.
run_phase() {
    local rc=0
    echo "=== plugin.sh $*" >>"$S/devstack.log"
    set +e
    (
        set -e
        export PATH="$PATH_FOR_PHASES"
        # shellcheck source=/dev/null
        source "$ROOT/devstack/settings"
        # shellcheck source=/dev/null
        source "$ROOT/devstack/plugin.sh" "$@"
    ) >"$S/phase.log" 2>&1
    rc=$?
    set -e
    cat "$S/phase.log" >>"$S/devstack.log"
    return "$rc"
}

# phase ARGS...: run_phase, which must succeed.
phase() {
    local rc=0
    run_phase "$@" || rc=$?
    if [ "$rc" = 0 ]; then
        pass "plugin.sh $* succeeds"
    else
        fail "plugin.sh $* exited $rc (log: $S/devstack.log)"
        tail -n 15 "$S/phase.log" | sed 's/^/    /'
    fi
}

# phase_fails WHY REGEX ARGS...: run_phase, which must fail and say REGEX.
phase_fails() {
    local why=$1 regex=$2 rc=0
    shift 2
    run_phase "$@" || rc=$?
    if [ "$rc" != 0 ] && grep -Eq -- "$regex" "$S/phase.log"; then
        pass "plugin.sh $* fails: $why"
    else
        fail "plugin.sh $* should fail ($why), exited $rc"
    fi
}

# key_mode FILE: the file's permission bits.
key_mode() { stat -c %a "$1"; }

# config_check: the real ekko-manage accepts the written file.
config_check() {
    "$EKKO_BIN/ekko-manage" --config-file "$CONF" config check --strict >"$S/config-check.out" 2>"$S/config-check.err"
}
check_config_is_real() {
    if config_check; then
        pass "ekko-manage config check accepts the written ekko.conf"
    else
        fail "ekko-manage config check rejects the written ekko.conf"
        grep -v '^ *[0-9]*:\|^ *at ' "$S/config-check.err" | head -5 | sed 's/^/    /'
    fi
    check "config check read our file (host $EKKO_HOST)" grep -Fq "host: \"$EKKO_HOST\"" "$S/config-check.out"
    cp "$CONF" "$S/ekko.conf.written"
    # Negative control: the same check must reject an option Ekko lacks.
    cp "$CONF" "$S/bogus.conf"
    python3 "$TMP/ini.py" set "$S/bogus.conf" swift bogus_option 1
    check_not "config check rejects a planted unknown option (control)" \
        "$EKKO_BIN/ekko-manage" --config-file "$S/bogus.conf" config check
}

# checks common to every host: [DEFAULT], [api], [keystone_authtoken].
# BIND: the API's expected listen address (loopback behind Apache).
check_common_conf() {
    check "ekko.conf written" test -f "$CONF"
    check "ekko.conf is not world-readable" test "$(stat -c %a "$CONF")" = 640
    check "[DEFAULT] state_path" ini_is "$CONF" DEFAULT state_path "$STATE"
    check "[DEFAULT] host" ini_is "$CONF" DEFAULT host "$EKKO_HOST"
    check "state_path created" test -d "$STATE"
    check "[api] bind_host ${BIND:-127.0.0.1}" ini_is "$CONF" api bind_host "${BIND:-127.0.0.1}"
    check "[api] bind_port" ini_is "$CONF" api bind_port 6800
    check "[api] workers from API_WORKERS" ini_is "$CONF" api workers 2
    check "[keystone_authtoken] auth_url" ini_is "$CONF" keystone_authtoken auth_url http://10.0.0.5/identity
    check "[keystone_authtoken] www_authenticate_uri" ini_is "$CONF" keystone_authtoken www_authenticate_uri http://10.0.0.5/identity
    check "[keystone_authtoken] username ekko" ini_is "$CONF" keystone_authtoken username ekko
    check "[keystone_authtoken] password" ini_is "$CONF" keystone_authtoken password secretservice
    check "[keystone_authtoken] project_name" ini_is "$CONF" keystone_authtoken project_name service
    check "[keystone_authtoken] interface public" ini_is "$CONF" keystone_authtoken interface public
    check "[keystone_authtoken] region_name" ini_is "$CONF" keystone_authtoken region_name RegionOne
    check_not "no [keystone_authtoken] memcached_servers (Ekko's token cache is per process)" ini_get "$CONF" keystone_authtoken memcached_servers
    check "policy file installed from the sample" cmp "$EKKO_CONF_DIR/policy.yaml" "$ROOT/etc/ekko/policy.yaml.sample"
    check "[oslo_policy] policy_file" ini_is "$CONF" oslo_policy policy_file "$EKKO_CONF_DIR/policy.yaml"
}

# With host bus users a controller is on a bus user of its own, made on
# the local broker: Ekko's exchange and queues only, never stackrabbit
# (every nova-compute holds it).
check_controller_bus_user() {
    check "controller bus user ekko created on the local broker" called_matching "^rabbitmqctl add_user\\|ekko\\|[0-9a-f]+$"
    check "its permissions: Ekko's exchange and queues only" \
        called "rabbitmqctl set_permissions|-p|/|ekko|^ekko(\\..*)?\$|^ekko(\\..*)?\$|^ekko(\\..*)?\$"
    check "[DEFAULT] transport_url: the controller's own user, not stackrabbit" \
        bash -c "grep -q '^transport_url = rabbit://ekko:[0-9a-f]*@10.0.0.5:5672/\$' '$CONF'"
}

# check_registered swift|local ENDPOINT
check_registered() {
    check "service user ekko created with the service role (service tokens, token validation)" \
        called "create_service_user ekko|service"
    check_not "the service user is never given admin" called_matching '(^create_service_user ekko\|admin|^get_or_add_user_project_role admin)'
    if [[ $1 == swift ]]; then
        check "with Swift, member in the service project (Swift's operator role)" \
            called "get_or_add_user_project_role member|ekko|service"
    else
        check_not "without Swift, no other role" called_matching '^get_or_add_user_project_role'
    fi
    check "service registered as type instance-backup" called "get_or_create_service ekko|instance-backup|Ekko instance backup"
    check "endpoint registered for instance-backup at $2" \
        called "get_or_create_endpoint instance-backup|RegionOne|$2"
    check "[api] public_endpoint $2" ini_is "$CONF" api public_endpoint "$2"
    check_not "nothing registered with freezer's service type backup" called_matching '^get_or_create_(service|endpoint) ([^|]*\|)?backup(\||$)'
    check "exactly one service and one endpoint registered" \
        test "$(calls_of get_or_create_service)$(calls_of get_or_create_endpoint)" = 11
}

# ---- aio: one node, Swift, all three services, build with cargo, client.
scenario_aio() {
    new_scenario aio
    ENABLED_SERVICES="key,mysql,rabbit,n-cpu,s-proxy,s-object,s-container,s-account"
    export EKKO_CLIENT_DIR="$S/python-ekkoclient"
    mkdir -p "$EKKO_CLIENT_DIR"
    export EKKO_BACKUP_INSTANCES="11111111-2222-3333-4444-555555555555:demo:/run/qmp.sock"

    phase stack pre-install
    check "pre-install does nothing" test ! -s "$EKKO_TEST_LOG"

    phase stack install
    check "cargo build --release --locked --bins in the repository, target in EKKO_CARGO_TARGET_DIR" \
        called "cargo build --release --locked --bins|cwd=$ROOT|CARGO_TARGET_DIR=$EKKO_CARGO_TARGET_DIR"
    local b
    for b in "${BINARIES[@]}"; do
        check "$b installed into EKKO_BIN_DIR" test -x "$EKKO_BIN_DIR/$b"
    done
    check "installed ekko-manage runs" "$EKKO_BIN_DIR/ekko-manage" --version
    check "python-ekkoclient installed with pip" called "pip_install $EKKO_CLIENT_DIR"
    check "settings enabled the three services" test "$(
        # shellcheck source=/dev/null
        source "$ROOT/devstack/settings"
        echo "$ENABLED_SERVICES"
    )" = "$ENABLED_SERVICES,ekko-api,ekko-backup,ekko-retention"

    phase stack post-config
    check_common_conf
    check "[database] connection from database_connection_url ekko" \
        ini_is "$CONF" database connection "mysql+pymysql://root:secretdb@127.0.0.1/ekko?charset=utf8&plugin=dbcounter"
    check "database_connection_url asked for ekko" called "database_connection_url ekko"
    check "[storage] backend swift (Swift enabled)" ini_is "$CONF" storage backend swift
    check "[swift] container_prefix" ini_is "$CONF" swift container_prefix ekko-
    check_not "no [local_store] with Swift" has_section "$CONF" local_store
    check "[backup] instance_source libvirt (nova-compute runs here)" ini_is "$CONF" backup instance_source libvirt
    check "[libvirt] connection_uri" ini_is "$CONF" libvirt connection_uri qemu:///system
    check_not "no [backup] discovery_dir with libvirt" ini_get "$CONF" backup discovery_dir
    check "[DEFAULT] debug" ini_is "$CONF" DEFAULT debug True
    check "[backup] host_bus_users on the controller" ini_is "$CONF" backup host_bus_users True
    check_controller_bus_user
    check "bus user ekko-host-<host> created on the local broker" called_matching "^rabbitmqctl add_user\\|ekko-host-$EKKO_HOST\\|"
    check "its permissions: its own queues" called_matching "^rabbitmqctl set_permissions\\|-p\\|/\\|ekko-host-$EKKO_HOST\\|\\^ekko"
    check "its topic permissions: status keys only" called_matching "^rabbitmqctl set_topic_permissions\\|-p\\|/\\|ekko-host-$EKKO_HOST\\|ekko\\|\\^status"
    check "ekko-backup.conf carries the host's bus URL" \
        bash -c "grep -q '^transport_url = rabbit://ekko-host-$EKKO_HOST:[0-9a-f]*@10.0.0.5:5672/' '$EKKO_CONF_DIR/ekko-backup.conf'"
    check "ekko-backup.conf is not world-readable" test "$(stat -c %a "$EKKO_CONF_DIR/ekko-backup.conf")" = 640
    check "database recreated" called "recreate_database ekko"
    check_registered swift http://10.0.0.5/instance-backup
    local site="$S/etc/apache2/sites-available/ekko-api.conf"
    check "Apache site written for ekko-api" test -f "$site"
    check "it proxies /instance-backup to the API's loopback listener" \
        grep -q '^    ProxyPass "http://127.0.0.1:6800" retry=0$' "$site"
    check "at <Location \"/instance-backup\">" grep -q '^<Location "/instance-backup">$' "$site"
    check "it tells the API its path" grep -q '^    RequestHeader set X-Forwarded-Prefix "/instance-backup"$' "$site"
    check_not "no placeholder left in the site" grep -q '%PATH%\|%URL%' "$site"
    for m in proxy proxy_http headers; do
        check "Apache module $m enabled" called "enable_apache_mod $m"
    done
    check "site enabled" called "enable_apache_site ekko-api"
    check "Apache restarted" called "restart_apache_server "
    check_not "links from public_endpoint, not from proxy headers" ini_get "$CONF" oslo_middleware enable_proxy_headers_parsing
    check_config_is_real
    check "config check sees the Swift store" grep -q "backend: Swift" "$S/config-check.out"
    check "[encryption] on by default (symmetric)" ini_is "$CONF" encryption enabled true
    check "[encryption] mode symmetric" ini_is "$CONF" encryption mode symmetric
    check "[encryption] master_key_file in the config dir" ini_is "$CONF" encryption master_key_file "$EKKO_CONF_DIR/master.key"
    check "master key generated with ekko-manage" called "exec ekko-manage key generate --output $EKKO_CONF_DIR/master.key"
    check "master key file is mode 0600" test "$(key_mode "$EKKO_CONF_DIR/master.key")" = 600
    check_not "no host key in symmetric mode" ini_get "$CONF" encryption host_key_file
    local key_before
    key_before=$(cat "$EKKO_CONF_DIR/master.key")
    phase stack post-config
    check "a second post-config keeps the master key (data stays readable)" \
        test "$(cat "$EKKO_CONF_DIR/master.key")" = "$key_before"
    check "the key is generated once" test "$(grep -c '^exec ekko-manage key generate' "$EKKO_TEST_LOG")" = 1

    # extra: the real `ekko-manage db sync` runs (through the installed
    # wrapper); the catalog goes to SQLite through Ekko's environment
    # override, as there is no MySQL here.
    export EKKO__DATABASE__CONNECTION="sqlite://$S/catalog.sqlite"
    check_not "catalog schema missing before the extra phase" "$EKKO_BIN/ekko-manage" --config-file "$CONF" db version
    phase stack extra
    check "ekko-manage db sync run with the written config" called "exec ekko-manage --config-file $CONF db sync"
    check "catalog schema up to date after the extra phase" "$EKKO_BIN/ekko-manage" --config-file "$CONF" db version
    unset EKKO__DATABASE__CONNECTION
    check "run_process ekko-api" called "run_process ekko-api|$EKKO_BIN_DIR/ekko-api --config-file $CONF"
    check "then waits for its /healthcheck" called "wait_for_service 60|http://127.0.0.1:6800/healthcheck"
    check "and for a 2xx from it through Apache" \
        called "curl -g -k -fsS --retry 10 --retry-connrefused --retry-delay 1 -o /dev/null http://10.0.0.5/instance-backup/healthcheck"
    check "run_process ekko-retention" called "run_process ekko-retention|$EKKO_BIN_DIR/ekko-retention --config-file $CONF"
    check "run_process ekko-backup with its own bus URL, as root (libvirt)" called "run_process ekko-backup|$EKKO_BIN_DIR/ekko-backup --config-file $CONF --config-file $EKKO_CONF_DIR/ekko-backup.conf||root"
    check "three processes started" test "$(calls_of run_process)" = 3

    # The QMP source, asked for: discovery files and listed instances.
    export EKKO_INSTANCE_SOURCE=qmp
    phase stack post-config
    check "[backup] instance_source qmp (asked for)" ini_is "$CONF" backup instance_source qmp
    check "[backup] discovery_dir" ini_is "$CONF" backup discovery_dir "$STATE/instances"
    check "discovery_dir created" test -d "$STATE/instances"
    check "[backup] instances from EKKO_BACKUP_INSTANCES" ini_is "$CONF" backup instances "$EKKO_BACKUP_INSTANCES"
    check_config_is_real
    unset EKKO_INSTANCE_SOURCE

    export EKKO__DATABASE__CONNECTION="sqlite://$S/catalog.sqlite"
    phase stack test-config
    unset EKKO__DATABASE__CONNECTION
    check "test-config runs ekko-status upgrade check" called "exec ekko-status --config-file $CONF upgrade check"
    check_not "and it passed" called_matching '^die '

    phase unstack
    for b in ekko-api ekko-retention ekko-backup; do
        check "unstack stops $b" called "stop_process $b"
    done

    phase clean
    check "clean removes the config dir" test ! -e "$EKKO_CONF_DIR"
    check "clean removes state_path" test ! -e "$STATE"
    for b in "${BINARIES[@]}"; do
        check "clean removes $b" test ! -e "$EKKO_BIN_DIR/$b"
    done
    check "clean drops the ekko database" called "mysql -uroot|-psecretdb|-h127.0.0.1|-e|DROP DATABASE IF EXISTS ekko;"
    check "clean removes the Apache site" bash -c "test ! -e '$site' && grep -qx 'disable_apache_site ekko-api' '$EKKO_TEST_LOG'"
    check "nothing died" test "$(calls_of die)" = 0
}

# ---- ctl-local: controller, no Swift, no ekko-backup, prebuilt binaries.
scenario_ctl_local() {
    new_scenario ctl-local
    ENABLED_SERVICES="key,mysql,rabbit"
    export EKKO_ENABLED_SERVICES=ekko-api,ekko-retention EKKO_SKIP_BUILD=True
    export EKKO_ENCRYPTION=public_key EKKO_USE_APACHE=False
    export EKKO_CLIENT_DIR="$S/no-such-client"
    write_wrappers "$EKKO_BIN_DIR"

    phase stack install
    check "EKKO_SKIP_BUILD: cargo not run" test "$(calls_of cargo)" = 0
    check "no client directory: pip not run" test "$(calls_of pip_install)" = 0

    phase stack post-config
    BIND=0.0.0.0 check_common_conf
    check "[storage] backend local (no Swift)" ini_is "$CONF" storage backend local
    check "[backup] host_bus_users on the controller" ini_is "$CONF" backup host_bus_users True
    check_controller_bus_user
    check_not "no ekko-backup.conf without ekko-backup" test -e "$EKKO_CONF_DIR/ekko-backup.conf"
    check "[local_store] path" ini_is "$CONF" local_store path "$STATE/store"
    check_not "no [swift] without Swift" has_section "$CONF" swift
    check_not "no [backup] discovery_dir without ekko-backup" ini_get "$CONF" backup discovery_dir
    check "[database] connection" ini_is "$CONF" database connection "mysql+pymysql://root:secretdb@127.0.0.1/ekko?charset=utf8&plugin=dbcounter"
    check "database recreated" called "recreate_database ekko"
    check_registered local http://10.0.0.5:6800
    check_not "EKKO_USE_APACHE=False: no Apache site" called_matching '^(enable_apache_site|restart_apache_server)'
    check_not "nor proxy headers believed" ini_get "$CONF" oslo_middleware enable_proxy_headers_parsing
    check_config_is_real
    check "config check sees the local store" grep -q "backend: Local" "$S/config-check.out"
    check "[encryption] mode public_key" ini_is "$CONF" encryption mode public_key
    check "controller: master key generated" test "$(key_mode "$EKKO_CONF_DIR/master.key")" = 600
    check "controller: host key generated" test "$(key_mode "$EKKO_CONF_DIR/host.key")" = 600
    check "controller: [encryption] master_key_file" ini_is "$CONF" encryption master_key_file "$EKKO_CONF_DIR/master.key"
    check "controller: [encryption] host_key_file" ini_is "$CONF" encryption host_key_file "$EKKO_CONF_DIR/host.key"
    check_not "master and host keys differ" cmp -s "$EKKO_CONF_DIR/master.key" "$EKKO_CONF_DIR/host.key"
    check_not "no restore_host without a local ekko-backup" ini_get "$CONF" encryption restore_host

    export EKKO__DATABASE__CONNECTION="sqlite://$S/catalog.sqlite"
    phase stack extra
    unset EKKO__DATABASE__CONNECTION
    check "ekko-manage db sync run" called "exec ekko-manage --config-file $CONF db sync"
    check "run_process ekko-api" called "run_process ekko-api|$EKKO_BIN_DIR/ekko-api --config-file $CONF"
    check "run_process ekko-retention" called "run_process ekko-retention|$EKKO_BIN_DIR/ekko-retention --config-file $CONF"
    check_not "ekko-backup not started (not enabled)" called_matching '^run_process ekko-backup'

    phase unstack
    check "unstack stops ekko-api and ekko-retention only" \
        test "$(grep '^stop_process ' "$EKKO_TEST_LOG" | sort | tr '\n' ' ')" = "stop_process ekko-api stop_process ekko-retention "

    phase clean
    check "clean removes the config dir" test ! -e "$EKKO_CONF_DIR"
    check "clean removes state_path" test ! -e "$STATE"
    check "EKKO_SKIP_BUILD: clean keeps binaries it did not install" test -x "$EKKO_BIN_DIR/ekko-api"
    check "clean drops the ekko database" called_matching '^mysql .*DROP DATABASE IF EXISTS ekko;$'
}

# ---- compute: ekko-backup only, Swift on the controller, no database.
scenario_compute() {
    new_scenario compute
    ENABLED_SERVICES="n-cpu,placement-client"
    export EKKO_ENABLED_SERVICES=ekko-backup EKKO_STORE_BACKEND=swift EKKO_BACKUP_USER=root
    export EKKO_ENCRYPTION=public_key
    # The broker is on the controller: the host's bus user is given.
    export EKKO_HOST_TRANSPORT_URL="rabbit://ekko-host-c1:pw@10.0.0.5:5672/"

    phase stack install
    check "cargo build run" test "$(calls_of cargo)" = 1

    phase_fails "no host key copied from the controller" "host.key missing: copy it from the controller" stack post-config
    # The controller's host key, copied as an operator would.
    "$EKKO_BIN/ekko-manage" key generate --output "$S/controller-host.key" >/dev/null
    mkdir -p "$EKKO_CONF_DIR"
    install -m 0600 "$S/controller-host.key" "$EKKO_CONF_DIR/host.key"
    phase stack post-config
    check "compute: [encryption] mode public_key" ini_is "$CONF" encryption mode public_key
    check "compute: [encryption] host_key_file" ini_is "$CONF" encryption host_key_file "$EKKO_CONF_DIR/host.key"
    check_not "compute: no master key (it cannot read backups)" ini_get "$CONF" encryption master_key_file
    check_not "compute: no master key file written" test -e "$EKKO_CONF_DIR/master.key"
    check "compute: the copied host key is kept" cmp "$S/controller-host.key" "$EKKO_CONF_DIR/host.key"
    check_not "compute: no key generated" called_matching '^exec ekko-manage key generate'
    # The same node as the restore host: it needs the master key too.
    export EKKO_RESTORE_HOST=$EKKO_HOST
    phase_fails "the restore host has no master key copied" "master.key missing: copy it from the controller" stack post-config
    "$EKKO_BIN/ekko-manage" key generate --output "$EKKO_CONF_DIR/master.key" >/dev/null
    phase stack post-config
    check "restore host: [encryption] master_key_file" ini_is "$CONF" encryption master_key_file "$EKKO_CONF_DIR/master.key"
    check_not "restore host: restore_host is the controller's setting" ini_get "$CONF" encryption restore_host
    unset EKKO_RESTORE_HOST
    check_common_conf
    check_not "no [database] on a compute node" has_section "$CONF" database
    check "[DEFAULT] transport_url from get_transport_url (ekko-backup.conf overrides it)" ini_is "$CONF" DEFAULT transport_url "rabbit://stackrabbit:secretrabbit@10.0.0.5:5672/"
    check "no database or Keystone calls on a compute node" \
        test "$(calls_of database_connection_url)$(calls_of recreate_database)$(calls_of create_service_user)$(calls_of get_or_create_service)$(calls_of get_or_create_endpoint)$(calls_of get_or_add_user_project_role)" = 000000
    check "[storage] backend swift from EKKO_STORE_BACKEND" ini_is "$CONF" storage backend swift
    check "compute: [backup] instance_source libvirt" ini_is "$CONF" backup instance_source libvirt
    check "compute: [libvirt] connection_uri" ini_is "$CONF" libvirt connection_uri qemu:///system
    check_not "compute: no [backup] discovery_dir with libvirt" ini_get "$CONF" backup discovery_dir
    check_not "no [backup] instances with libvirt" ini_get "$CONF" backup instances
    check_config_is_real
    export EKKO_INSTANCE_SOURCE=bogus
    phase_fails "an unknown instance source" "EKKO_INSTANCE_SOURCE must be libvirt or qmp" stack post-config
    unset EKKO_INSTANCE_SOURCE
    phase stack post-config

    phase stack extra
    check_not "no db sync on a compute node" called_matching '^exec ekko-manage'
    check "run_process ekko-backup as EKKO_BACKUP_USER, on its own bus user" called "run_process ekko-backup|$EKKO_BIN_DIR/ekko-backup --config-file $CONF --config-file $EKKO_CONF_DIR/ekko-backup.conf||root"
    check "ekko-backup.conf has EKKO_HOST_TRANSPORT_URL" ini_is "$EKKO_CONF_DIR/ekko-backup.conf" DEFAULT transport_url "$EKKO_HOST_TRANSPORT_URL"
    check "no bus user created without the broker" test "$(calls_of rabbitmqctl)" = 0
    check "only ekko-backup started" test "$(calls_of run_process)" = 1

    phase unstack
    check "unstack stops ekko-backup only" test "$(grep '^stop_process ' "$EKKO_TEST_LOG")" = "stop_process ekko-backup"

    phase clean
    check "clean removes the config dir" test ! -e "$EKKO_CONF_DIR"
    check "no database to drop on a compute node" test "$(calls_of mysql)" = 0
}

# ---- rustup: no cargo anywhere on PATH; install phase uses rustup.
scenario_rustup() {
    new_scenario rustup
    local dir
    for dir in /usr/local/bin /usr/bin /bin; do
        if [ -x "$dir/cargo" ]; then
            echo "skip [rustup] $dir/cargo exists, cannot hide it"
            return 0
        fi
    done
    ENABLED_SERVICES="key,mysql,rabbit"
    export EKKO_ENABLED_SERVICES=ekko-api
    mkdir -p "$S/nocargo" "$S/home"
    # curl stand-in: the rustup "installer" puts the stand-in cargo in
    # ~/.cargo/bin and records its arguments.
    cat >"$S/nocargo/curl" <<SH
#!/usr/bin/env bash
printf 'curl %s\n' "\$*" >>"\$EKKO_TEST_LOG"
cat <<'INSTALLER'
printf 'rustup-init %s\n' "\$*" >>"\$EKKO_TEST_LOG"
mkdir -p "\$HOME/.cargo/bin"
cp "$TMP/fakebin/cargo" "\$HOME/.cargo/bin/cargo"
INSTALLER
SH
    chmod 0755 "$S/nocargo/curl"
    PATH_FOR_PHASES="$S/nocargo:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    local home=$HOME
    export HOME="$S/home"
    phase stack install
    export HOME=$home
    check "rustup fetched from https://sh.rustup.rs" called "curl --proto =https --tlsv1.2 -sSf https://sh.rustup.rs"
    check "rustup-init run non-interactively with the stable toolchain" \
        called "rustup-init -y --profile minimal --default-toolchain stable"
    check "the new cargo built Ekko" called_matching '^cargo build --release --locked --bins\|'
    check "binaries installed" test -x "$EKKO_BIN_DIR/ekko-api"
}

scenario_aio
scenario_ctl_local
scenario_compute
scenario_rustup

passes=$(wc -l <"$TMP/passes")
failures=$(wc -l <"$TMP/failures")
echo
if [ "$failures" -gt 0 ]; then
    echo "devstack-test: $failures check(s) FAILED, $passes passed:"
    sed 's/^/  /' "$TMP/failures"
    exit 1
fi
echo "devstack-test: all $passes checks passed"
