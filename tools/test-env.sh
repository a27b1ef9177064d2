#!/usr/bin/env bash
# tools/test-env.sh - Ekko's test environment: REAL OpenStack Keystone +
# Swift, MariaDB, RabbitMQ and memcached on 127.0.0.1, and libvirtd (with
# virtlogd, as on a Nova compute host) for the integration tests (Debian 12,
# root, no systemd needed).
#
#   eval "$(bash tools/test-env.sh)"     # or: source $EKKO_OS_STATE/env.sh
#   bash tools/test-env-verify.sh        # end-to-end checks with the real clients
#   bash tools/test-env-stop.sh [--purge]
#   bash tools/test-env.sh glance-stop|glance-start   # only glance-api (tests
#                                        # of Glance going away mid-upload)
#
# Idempotent: installs missing Debian packages, creates state once, starts only
# what is not already running, (re)creates Keystone users/projects/endpoints
# only when missing, waits until everything answers, then prints `export` lines
# (stdout only; progress goes to stderr). Stop with tools/test-env-stop.sh,
# which stops only what this script started (by its pid files).
#
# Uses a MariaDB or RabbitMQ that already answers on the standard port (or
# the EKKO_OS_*_PORT given) instead of starting a second one:
#   - MariaDB: the databases and users `ekko` and `keystone` are provisioned
#     through a root connection: first `mariadb -uroot` over the unix socket
#     $EKKO_OS_MYSQL_ROOT_SOCKET (default /run/mysqld/mysqld.sock; it must be
#     the server on that port), then over TCP as $EKKO_OS_MYSQL_ROOT_USER
#     (default root) / $EKKO_OS_MYSQL_ROOT_PASSWORD. env.sh then has
#     EKKO_MYSQL_SOCKET = the socket that worked, or empty.
#   - RabbitMQ: if the system `rabbitmqctl` ($EKKO_OS_RABBITMQCTL) can manage
#     it, user ekko/$EKKO_OS_AMQP_PASSWORD is created or updated (tag
#     administrator, all permissions on vhost /); otherwise $EKKO_OS_AMQP_URL
#     is used as EKKO_AMQP_URL.
#   If neither way works, the script stops and says what to set.
#
# S3: the Swift proxy also answers S3 (Swift's own s3api middleware, path-style,
# region us-east-1), signatures checked by Keystone through s3token against the
# EC2 credentials of the ekko service user (created once); env.sh then has
# EKKO_S3_ENDPOINT (= the Swift URL), EKKO_S3_REGION, EKKO_S3_ACCESS_KEY and
# EKKO_S3_SECRET_KEY; EKKO_S3_REPLICA_ACCESS_KEY/SECRET_KEY sign into another
# account (project ekko_replica), the second store of replication tests. A changed proxy-server.conf restarts the proxy.
#
# Everything lives under $EKKO_OS_STATE (default /var/lib/ekko-openstack):
#   mariadb/ rabbitmq/ keystone/ (short/: the short-token one) swift/ (rings,
#   confs, device dir) glance/ (confs, images/) log/ run/ env.sh
# All daemons run as root and bind 127.0.0.1 only.
#
# libvirt (packages from tools/install-deps.sh; skipped with a warning when
# they are missing, or with EKKO_OS_LIBVIRT=0): `virtlogd -d`, `libvirtd -d`
# unless already running (their own pid files /run/virtlogd.pid and
# /run/libvirtd.pid; copies in run/ mark the ones this script started, which
# are the only ones tools/test-env-stop.sh stops), logs in log/, ready when
# `virsh version` answers; env.sh then has EKKO_LIBVIRT_URI=qemu:///system
# (empty without libvirt). A root-only /dev/kvm gets udev's usual root:kvm
# 0660: otherwise libvirt re-probes QEMU (~5 s) on every define and start.
# Domains are TCG (`type='qemu'`); QEMU runs as libvirt-qemu, so the
# directories of test disks and NBD sockets must let that user in.
#
# Glance (package glance-api from tools/install-deps.sh, which installs it
# only after qemu-utils 10 from backports: python3-glance depends on
# qemu-utils and bookworm main's 7.2 must never come in; skipped with a
# warning when /usr/bin/glance-api is missing, or with EKKO_OS_GLANCE=0):
# the eventlet `glance-api` (workers = 1) on $H:9292, file store in
# glance/images, MariaDB database `glance`, Keystone user `glance`
# (service project: admin + service; system: reader, which oslo.limit needs
# to see every project's limits), service `image`; env.sh then has
# EKKO_GLANCE_URL (empty without Glance). Quotas are Keystone unified limits
# (use_keystone_limits; the legacy global user_storage_quota is ignored
# then): large registered defaults, and a test sets its own project's
# limit with the admin credentials, e.g.
#   openstack limit create --service glance --region RegionOne \
#     --project $PROJECT_ID --resource-limit 1 image_size_total   # MiB
# (`openstack limit delete ID` likewise; but GET /v3/limits with a project
# token lists only that project's limits: list with a system-scoped admin
# token, `--os-system-scope all` without OS_PROJECT_NAME). Glance checks
# image_size_total only BEFORE an upload: usage (whole MiB) > limit -> 413
# at once; the upload that crosses the limit is accepted, so a test first
# puts more than the limit into the project. authtoken accepts an expired
# user token together with an X-Service-Token of a user with the `service`
# role (ekko has it), within Keystone's [token] allow_expired_window.
# glance-api stopped or killed mid-upload leaves that image `saving` for
# good (a new PUT gets 409, DELETE works, the partial file stays in
# glance/images); a client that drops mid-upload sets it back to `queued`.
#
# A second Keystone (same database, fernet keys and memcached; its own
# uWSGI) on $H:5001 issues tokens that expire after 20 s
# (EKKO_KEYSTONE_SHORT_URL): every service validates them as usual, so a
# test can watch a user token expire without changing the main Keystone's
# [token] expiration (global, 1 h).
set -euo pipefail

STATE=${EKKO_OS_STATE:-/var/lib/ekko-openstack}
H=127.0.0.1
MYSQL_PORT=${EKKO_OS_MYSQL_PORT:-3306}
AMQP_PORT=${EKKO_OS_AMQP_PORT:-5672}
RABBIT_DIST_PORT=${EKKO_OS_RABBIT_DIST_PORT:-25672}
EPMD_PORT=${EKKO_OS_EPMD_PORT:-4369}
MEMCACHED_PORT=${EKKO_OS_MEMCACHED_PORT:-11211}
KEYSTONE_PORT=${EKKO_OS_KEYSTONE_PORT:-5000}
SWIFT_PORT=${EKKO_OS_SWIFT_PORT:-8080}
SWIFT_OBJECT_PORT=${EKKO_OS_SWIFT_OBJECT_PORT:-6200}
SWIFT_CONTAINER_PORT=${EKKO_OS_SWIFT_CONTAINER_PORT:-6201}
SWIFT_ACCOUNT_PORT=${EKKO_OS_SWIFT_ACCOUNT_PORT:-6202}
KEYSTONE_PROCESSES=${EKKO_OS_KEYSTONE_PROCESSES:-1}
KEYSTONE_THREADS=${EKKO_OS_KEYSTONE_THREADS:-4}
TOKEN_EXPIRATION=${EKKO_OS_TOKEN_EXPIRATION:-3600}
# Tokens of the short-lived Keystone (seconds; Keystone accepts >= 0).
KEYSTONE_SHORT_PORT=${EKKO_OS_KEYSTONE_SHORT_PORT:-5001}
SHORT_TOKEN_EXPIRATION=${EKKO_OS_SHORT_TOKEN_EXPIRATION:-20}
# How long after its expiry a token is still accepted together with a
# service token (Keystone's default, 2 days; both Keystones).
ALLOW_EXPIRED_WINDOW=${EKKO_OS_ALLOW_EXPIRED_WINDOW:-172800}
GLANCE=${EKKO_OS_GLANCE:-1}    # 0: no Glance
GLANCE_PORT=${EKKO_OS_GLANCE_PORT:-9292}
# Test-only credentials (loopback only). Changing them needs a clean state.
PW=${EKKO_OS_PASSWORD:-secret}
ADMIN_PASS=${EKKO_OS_ADMIN_PASSWORD:-admin-$PW}
SERVICE_PASS=${EKKO_OS_SERVICE_PASSWORD:-ekko-$PW}
SWIFT_SERVICE_PASS=${EKKO_OS_SWIFT_SERVICE_PASSWORD:-swift-$PW}
DEMO_PASS=${EKKO_OS_DEMO_PASSWORD:-demo-$PW}
READER_PASS=${EKKO_OS_READER_PASSWORD:-reader-$PW}
ALT_PASS=${EKKO_OS_ALT_PASSWORD:-alt-$PW}
DB_PASS=${EKKO_OS_DB_PASSWORD:-ekko-db-$PW}
KEYSTONE_DB_PASS=${EKKO_OS_KEYSTONE_DB_PASSWORD:-keystone-db-$PW}
GLANCE_SERVICE_PASS=${EKKO_OS_GLANCE_SERVICE_PASSWORD:-glance-$PW}
GLANCE_DB_PASS=${EKKO_OS_GLANCE_DB_PASSWORD:-glance-db-$PW}
AMQP_PASS=${EKKO_OS_AMQP_PASSWORD:-ekko-mq-$PW}
READY_TIMEOUT=${EKKO_OS_READY_TIMEOUT:-120}
# Only used when a MariaDB / RabbitMQ not started by this script holds the port:
MYSQL_ROOT_SOCKET=${EKKO_OS_MYSQL_ROOT_SOCKET:-/run/mysqld/mysqld.sock}
MYSQL_ROOT_USER=${EKKO_OS_MYSQL_ROOT_USER:-}
MYSQL_ROOT_PASSWORD=${EKKO_OS_MYSQL_ROOT_PASSWORD:-}
RABBITMQCTL=${EKKO_OS_RABBITMQCTL:-rabbitmqctl}
EXTERNAL_AMQP_URL=${EKKO_OS_AMQP_URL:-}
# Swift device: "xfs" = sparse XFS image loop-mounted on the device dir (what a
# real SAIO does; 64 KiB xattrs), falling back to "dir" when mounting fails;
# "dir" = plain directory on the root fs (ext4 here: user xattrs work, but all
# of an object's xattrs must fit one 4 KiB block, so >~2 KB of user metadata
# gets 507/503).
SWIFT_DISK=${EKKO_OS_SWIFT_DISK:-xfs}
SWIFT_DISK_SIZE=${EKKO_OS_SWIFT_DISK_SIZE:-8G}
LIBVIRT=${EKKO_OS_LIBVIRT:-1}  # 0: do not start libvirtd/virtlogd
LIBVIRT_URI=qemu:///system

PY=/usr/bin/python3            # Debian's python (a pyenv shim may shadow python3)
LOG=$STATE/log RUN=$STATE/run
KS_URL=http://$H:$KEYSTONE_PORT
KS_SHORT_URL=http://$H:$KEYSTONE_SHORT_PORT
GLANCE_URL=http://$H:$GLANCE_PORT
SWIFT_URL=http://$H:$SWIFT_PORT
T0=${EPOCHREALTIME/./}

log() { local d=$(( ${EPOCHREALTIME/./} - T0 )); printf '[ekko test-env +%d.%02ds] %s\n' $((d/1000000)) $((d%1000000/10000)) "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root"

# ---------------------------------------------------------------- packages
PKGS=(mariadb-server mariadb-client rabbitmq-server memcached
      python3-keystone uwsgi-core uwsgi-plugin-python3
      swift swift-proxy swift-object swift-container swift-account
      python3-keystonemiddleware python3-openstackclient python3-swiftclient
      python3-amqp xfsprogs curl jq)
install_missing() {
  local p missing=()
  for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing: ${missing[*]}"
  # Keep maintainer scripts from starting the distro's own daemons on our ports.
  local own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; own_policy=1
  fi
  local apt=(apt-get -o DPkg::Lock::Timeout=900 -y install --no-install-recommends)
  if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" "${missing[@]}" >&2; then
    apt-get -o DPkg::Lock::Timeout=900 update >&2
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" "${missing[@]}" >&2 || { [ $own_policy = 1 ] && rm -f /usr/sbin/policy-rc.d; die "apt-get install failed"; }
  fi
  [ $own_policy = 1 ] && rm -f /usr/sbin/policy-rc.d
  log "packages installed"
}
install_missing

mkdir -p "$STATE" "$LOG" "$RUN"
chmod 755 "$STATE"

# ---------------------------------------------------------------- helpers
# alive NAME PATTERN: pid file exists, process alive and its cmdline matches.
alive() {
  local f=$RUN/$1.pid pid
  [ -s "$f" ] || return 1
  pid=$(cat "$f")
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$2"
}
port_open() { (exec 3<>"/dev/tcp/$H/$1") 2>/dev/null; }
# spawn NAME LOGFILE CMD...: detach (own session), record pid.
# stop_ours NAME PATTERN [WHAT]: TERM our recorded pid (cmdline must match),
# wait up to 30 s; WHAT (default "restarting") is what the log line says.
stop_ours() {
  local f=$RUN/$1.pid pid
  alive "$1" "$2" || return 0
  pid=$(cat "$f")
  log "${3:-restarting} $1 ($pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$f"
}
spawn() {
  local name=$1 logf=$2; shift 2
  nohup setsid "$@" >>"$logf" 2>&1 </dev/null &
  echo $! >"$RUN/$name.pid"
}
check_port_free() {  # PORT NAME
  if port_open "$1"; then die "port $1 ($2) is already in use by something this script did not start"; fi
}
wait_for() {  # DESC CMD... (retries until success or READY_TIMEOUT)
  local desc=$1; shift
  local end=$(( $(date +%s) + READY_TIMEOUT ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$end" ] || die "timeout waiting for $desc (see $LOG)"
    sleep 0.2
  done
  log "$desc ready"
}
http_ok() { curl -fsS -o /dev/null --max-time 5 "$1"; }
memcached_flush() (
  reply=
  exec 3<>"/dev/tcp/$H/$MEMCACHED_PORT"
  printf 'flush_all\r\n' >&3
  read -r -t 5 reply <&3 || true
  [ "${reply%$'\r'}" = OK ]
)

# ---------------------------------------------------------------- memcached
start_memcached() {
  if alive memcached memcached; then log "memcached already running"; return; fi
  check_port_free "$MEMCACHED_PORT" memcached
  spawn memcached "$LOG/memcached.log" /usr/bin/memcached -u root -l $H -p "$MEMCACHED_PORT" -U 0 -m 64 -c 1024
}

# ---------------------------------------------------------------- MariaDB
MY=$STATE/mariadb
MYSOCK=$MY/mysqld.sock
MYSQL_MODE=own                 # own | external (set by detect_mariadb)
MYSQL_ROOT=(mariadb --no-defaults --protocol=socket -S "$MYSOCK" -uroot)
ENV_MYSQL_SOCKET=$MYSOCK       # EKKO_MYSQL_SOCKET in env.sh
mysql_root() { "${MYSQL_ROOT[@]}" "$@"; }
# A MariaDB that answers on $MYSQL_PORT but was not started by this script is
# used as it is: find a root connection to it (or die saying what to set).
detect_mariadb() {
  if alive mariadb mariadbd || ! port_open "$MYSQL_PORT"; then return 0; fi
  MYSQL_MODE=external
  log "MariaDB: port $MYSQL_PORT answers and this script did not start it: using that server"
  local tried=() port
  if [ -S "$MYSQL_ROOT_SOCKET" ]; then
    MYSQL_ROOT=(mariadb --no-defaults --protocol=socket -S "$MYSQL_ROOT_SOCKET" -uroot)
    if port=$(mysql_root -N -B -e 'SELECT @@port' 2>"$LOG/mariadb-root.err"); then
      if [ "$port" = "$MYSQL_PORT" ]; then
        ENV_MYSQL_SOCKET=$MYSQL_ROOT_SOCKET
        log "MariaDB: root login over $MYSQL_ROOT_SOCKET"
        return 0
      fi
      tried+=("root over $MYSQL_ROOT_SOCKET: that is the server on port $port, not $MYSQL_PORT;")
    else
      tried+=("root over $MYSQL_ROOT_SOCKET: $(head -n1 "$LOG/mariadb-root.err");")
    fi
  else
    tried+=("no socket at $MYSQL_ROOT_SOCKET;")
  fi
  if [ -n "$MYSQL_ROOT_USER$MYSQL_ROOT_PASSWORD" ]; then
    # Credentials in a 0600 option file (removed on exit), not on the command line.
    trap 'rm -f "$RUN/mariadb-root.cnf"' EXIT
    (umask 077; printf '[client]\nuser = %s\npassword = %s\n' "${MYSQL_ROOT_USER:-root}" "$MYSQL_ROOT_PASSWORD" >"$RUN/mariadb-root.cnf")
    MYSQL_ROOT=(mariadb --defaults-file="$RUN/mariadb-root.cnf" --protocol=tcp -h "$H" -P "$MYSQL_PORT")
    if mysql_root -e 'SELECT 1' >/dev/null 2>"$LOG/mariadb-root.err"; then
      ENV_MYSQL_SOCKET=
      log "MariaDB: login as ${MYSQL_ROOT_USER:-root} over TCP $H:$MYSQL_PORT"
      return 0
    fi
    tried+=("${MYSQL_ROOT_USER:-root} over TCP (EKKO_OS_MYSQL_ROOT_USER/PASSWORD): $(head -n1 "$LOG/mariadb-root.err")")
  else
    tried+=("EKKO_OS_MYSQL_ROOT_USER/EKKO_OS_MYSQL_ROOT_PASSWORD are not set")
  fi
  die "MariaDB on $H:$MYSQL_PORT was not started by this script and no root login to it works
  (tried: ${tried[*]}).
  Set EKKO_OS_MYSQL_ROOT_USER and EKKO_OS_MYSQL_ROOT_PASSWORD to an account that may log in over TCP and
  CREATE DATABASE / CREATE USER / GRANT ALL ... WITH GRANT OPTION (or EKKO_OS_MYSQL_ROOT_SOCKET to that
  server's unix socket, for root), or set EKKO_OS_MYSQL_PORT to a free port to start a private MariaDB."
}
start_mariadb() {
  [ "$MYSQL_MODE" = own ] || return 0
  mkdir -p "$MY/data" "$MY/tmp"
  cat >"$MY/my.cnf" <<EOF
[mysqld]
user = root
datadir = $MY/data
tmpdir = $MY/tmp
socket = $MYSOCK
pid-file = $RUN/mariadb.pid
log-error = $LOG/mariadb.err
bind-address = $H
port = $MYSQL_PORT
skip-name-resolve
character-set-server = utf8mb4
collation-server = utf8mb4_general_ci
innodb_buffer_pool_size = 64M
innodb_log_file_size = 32M
innodb_flush_log_at_trx_commit = 2
performance_schema = OFF
max_connections = 300
EOF
  if [ ! -d "$MY/data/mysql" ]; then
    log "initialising MariaDB datadir"
    mariadb-install-db --defaults-file="$MY/my.cnf" --user=root --skip-test-db >"$LOG/mariadb-install.log" 2>&1 \
      || { rm -rf "$MY/data"; die "mariadb-install-db failed, see $LOG/mariadb-install.log"; }
  fi
  if alive mariadb mariadbd; then log "MariaDB already running"; return; fi
  check_port_free "$MYSQL_PORT" mariadb
  # mariadbd writes its own pid file (same path) once up.
  spawn mariadb "$LOG/mariadb.out" /usr/sbin/mariadbd --defaults-file="$MY/my.cnf"
}
# service_db_sql NAME PASSWORD: the SQL giving OpenStack service NAME its
# database and its user NAME (from anywhere), the password set again when
# the user exists.
service_db_sql() {
  cat <<EOF
CREATE DATABASE IF NOT EXISTS $1;
CREATE USER IF NOT EXISTS '$1'@'localhost' IDENTIFIED BY '$2';
CREATE USER IF NOT EXISTS '$1'@'%' IDENTIFIED BY '$2';
ALTER USER '$1'@'localhost' IDENTIFIED BY '$2';
ALTER USER '$1'@'%' IDENTIFIED BY '$2';
GRANT ALL PRIVILEGES ON $1.* TO '$1'@'localhost';
GRANT ALL PRIVILEGES ON $1.* TO '$1'@'%';
EOF
}
provision_mariadb() {
  # ALTER USER: on a server that already had these users, make the passwords
  # match env.sh (a no-op on our own server).
  mysql_root <<EOF
$(service_db_sql keystone "$KEYSTONE_DB_PASS")
CREATE DATABASE IF NOT EXISTS ekko;
CREATE USER IF NOT EXISTS 'ekko'@'localhost' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS 'ekko'@'%' IDENTIFIED BY '$DB_PASS';
ALTER USER 'ekko'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER 'ekko'@'%' IDENTIFIED BY '$DB_PASS';
GRANT ALL PRIVILEGES ON *.* TO 'ekko'@'localhost' WITH GRANT OPTION;
GRANT ALL PRIVILEGES ON *.* TO 'ekko'@'%' WITH GRANT OPTION;
FLUSH PRIVILEGES;
EOF
  [ "$GLANCE" = 1 ] || return 0
  mysql_root <<EOF
$(service_db_sql glance "$GLANCE_DB_PASS")
FLUSH PRIVILEGES;
EOF
}

# ---------------------------------------------------------------- RabbitMQ
RB=$STATE/rabbitmq
AMQP_MODE=own                  # own | rabbitmqctl | url (set by detect_rabbitmq)
AMQP_URL=amqp://ekko:$AMQP_PASS@$H:$AMQP_PORT/%2f
redact_url() { sed -E 's#(://[^:/@]*):[^@]*@#\1:***@#' <<<"$1"; }
# amqp_login URL: open a connection + channel (python3-amqp), exit 0 on success.
amqp_login() {
  AMQP_CHECK_URL=$1 "$PY" - <<'PYEOF'
import os, urllib.parse as up, amqp
u = up.urlsplit(os.environ['AMQP_CHECK_URL'])
vhost = up.unquote(u.path[1:]) if len(u.path) > 1 else '/'
c = amqp.Connection(host='%s:%d' % (u.hostname, u.port or (5671 if u.scheme == 'amqps' else 5672)),
                    userid=up.unquote(u.username or 'guest'), password=up.unquote(u.password or 'guest'),
                    virtual_host=vhost, ssl=(u.scheme == 'amqps'), connect_timeout=10)
c.connect()
c.channel().close()
c.close()
PYEOF
}
rabbit_ctl() { timeout 60 "$RABBITMQCTL" -q "$@"; }
# A broker that answers on $AMQP_PORT but was not started by this script is
# used as it is: add our user with its rabbitmqctl, else take EKKO_OS_AMQP_URL.
detect_rabbitmq() {
  if alive rabbitmq beam || ! port_open "$AMQP_PORT"; then return 0; fi
  log "RabbitMQ: port $AMQP_PORT answers and this script did not start it: using that broker"
  mkdir -p "$STATE/bin"
  if command -v "$RABBITMQCTL" >/dev/null 2>&1 && rabbit_ctl list_vhosts >/dev/null 2>"$LOG/rabbitmqctl.err"; then
    AMQP_MODE=rabbitmqctl
    log "RabbitMQ: adding user ekko (administrator, vhost /) with $RABBITMQCTL"
    if rabbit_ctl list_users 2>>"$LOG/rabbitmqctl.err" | awk '{print $1}' | grep -x ekko >/dev/null; then
      rabbit_ctl change_password ekko "$AMQP_PASS" >/dev/null 2>>"$LOG/rabbitmqctl.err" || die "rabbitmqctl change_password failed, see $LOG/rabbitmqctl.err"
    else
      rabbit_ctl add_user ekko "$AMQP_PASS" >/dev/null 2>>"$LOG/rabbitmqctl.err" || die "rabbitmqctl add_user failed, see $LOG/rabbitmqctl.err"
    fi
    rabbit_ctl set_user_tags ekko administrator >/dev/null 2>>"$LOG/rabbitmqctl.err" || die "rabbitmqctl set_user_tags failed, see $LOG/rabbitmqctl.err"
    rabbit_ctl set_permissions -p / ekko '.*' '.*' '.*' >/dev/null 2>>"$LOG/rabbitmqctl.err" || die "rabbitmqctl set_permissions failed, see $LOG/rabbitmqctl.err"
    printf '#!/bin/sh\n# the broker on %s:%s was not started by tools/test-env.sh\nexec %s "$@"\n' "$H" "$AMQP_PORT" "$(command -v "$RABBITMQCTL")" >"$STATE/bin/rabbitmqctl"
  elif [ -n "$EXTERNAL_AMQP_URL" ]; then
    AMQP_MODE=url
    AMQP_URL=$EXTERNAL_AMQP_URL
    log "RabbitMQ: $RABBITMQCTL cannot manage it (see $LOG/rabbitmqctl.err); using EKKO_OS_AMQP_URL=$(redact_url "$AMQP_URL")"
    printf '#!/bin/sh\necho "rabbitmqctl: the broker on %s:%s was not started by tools/test-env.sh (EKKO_OS_AMQP_URL is used)" >&2\nexit 1\n' "$H" "$AMQP_PORT" >"$STATE/bin/rabbitmqctl"
  else
    die "RabbitMQ on $H:$AMQP_PORT was not started by this script, '$RABBITMQCTL' cannot manage it
  (see $LOG/rabbitmqctl.err) and EKKO_OS_AMQP_URL is not set.
  Set EKKO_OS_AMQP_URL=amqp://USER:PASSWORD@$H:$AMQP_PORT/%2f (a user with configure/write/read permissions
  on that vhost), or set EKKO_OS_AMQP_PORT to a free port to start a private RabbitMQ."
  fi
  chmod 755 "$STATE/bin/rabbitmqctl"
  local i
  for i in 1 2 3 4 5; do
    if amqp_login "$AMQP_URL" 2>"$LOG/amqp-login.err"; then
      log "RabbitMQ: login as $(redact_url "$AMQP_URL") works"
      return 0
    fi
    [ "$i" = 5 ] || sleep 1
  done
  die "cannot log in to RabbitMQ at $(redact_url "$AMQP_URL"): $(tail -n1 "$LOG/amqp-login.err")"
}
rabbit_env() {
  export HOME=$RB                          # .erlang.cookie lives here
  export RABBITMQ_NODENAME=rabbit@localhost
  export RABBITMQ_NODE_IP_ADDRESS=$H RABBITMQ_NODE_PORT=$AMQP_PORT RABBITMQ_DIST_PORT=$RABBIT_DIST_PORT
  export ERL_EPMD_ADDRESS=$H ERL_EPMD_PORT=$EPMD_PORT
  export RABBITMQ_CONF_ENV_FILE=$RB/rabbitmq-env.conf
  export RABBITMQ_CONFIG_FILE=$RB/rabbitmq.conf
  export RABBITMQ_ENABLED_PLUGINS_FILE=$RB/enabled_plugins
  export RABBITMQ_MNESIA_BASE=$RB/mnesia RABBITMQ_LOG_BASE=$LOG/rabbitmq
  export RABBITMQ_PID_FILE=$RUN/rabbitmq.pid
  export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
  export RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
}
start_rabbitmq() {
  [ "$AMQP_MODE" = own ] || return 0
  mkdir -p "$RB/mnesia" "$LOG/rabbitmq" "$STATE/bin"
  # $STATE/bin/rabbitmqctl: CLI with this node's cookie/env (list_queues, status, ...)
  cat >"$STATE/bin/rabbitmqctl" <<EOF
#!/bin/sh
export HOME=$RB RABBITMQ_NODENAME=rabbit@localhost ERL_EPMD_ADDRESS=$H ERL_EPMD_PORT=$EPMD_PORT
export RABBITMQ_CONF_ENV_FILE=$RB/rabbitmq-env.conf RABBITMQ_CONFIG_FILE=$RB/rabbitmq.conf
export RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
exec /usr/lib/rabbitmq/bin/rabbitmqctl -n rabbit@localhost "\$@"
EOF
  chmod 755 "$STATE/bin/rabbitmqctl"
  : >"$RB/rabbitmq-env.conf"
  echo '[].' >"$RB/enabled_plugins"
  cat >"$RB/rabbitmq.conf" <<EOF
listeners.tcp.default = $H:$AMQP_PORT
loopback_users.guest = true
# created on first boot only (empty mnesia)
default_user = ekko
default_pass = $AMQP_PASS
default_vhost = /
default_permissions.configure = .*
default_permissions.read = .*
default_permissions.write = .*
default_user_tags.administrator = true
EOF
  if alive rabbitmq beam; then log "RabbitMQ already running"; return; fi
  check_port_free "$AMQP_PORT" rabbitmq
  (
    rabbit_env
    # epmd first, explicitly bound to loopback (otherwise erl starts one on 0.0.0.0)
    # ($RUN/epmd.started tells tools/test-env-stop.sh that this epmd is ours)
    if ! epmd -names >/dev/null 2>&1; then
      epmd -address $H -port "$EPMD_PORT" -daemon && touch "$RUN/epmd.started"
    fi
    rm -f "$RUN/rabbitmq.pid"
    nohup setsid /usr/lib/rabbitmq/bin/rabbitmq-server >>"$LOG/rabbitmq.out" 2>&1 </dev/null &
  )
}

# ---------------------------------------------------------------- Keystone
KS=$STATE/keystone
keystone_manage() { keystone-manage --config-file "$KS/keystone.conf" "$@"; }
# keystone_conf EXPIRATION LOGFILE: keystone.conf on stdout. Both Keystones
# share the database, the fernet/credential keys and memcached, so each
# validates the other's tokens; the expiry is in the token itself.
keystone_conf() {
  cat <<EOF
[DEFAULT]
log_file = $2
use_stderr = false
[database]
connection = mysql+pymysql://keystone:$KEYSTONE_DB_PASS@$H:$MYSQL_PORT/keystone?charset=utf8
[identity]
# bcrypt cost 4 instead of 12: token issue ~0.05 s instead of ~0.35 s (test-only)
password_hash_rounds = ${EKKO_OS_PASSWORD_HASH_ROUNDS:-4}
[token]
provider = fernet
expiration = $1
# An expired token still validates with ?allow_expired=1 (what authtoken
# asks for when the request also has a valid service token) this long.
allow_expired_window = $ALLOW_EXPIRED_WINDOW
[fernet_tokens]
key_repository = $KS/fernet-keys
[fernet_receipts]
key_repository = $KS/fernet-keys
[credential]
key_repository = $KS/credential-keys
[cache]
# Without a cache every request costs ~200 SQL queries (~0.5-1 s CPU here).
# memcached (not dogpile.cache.memory) so all uWSGI workers see invalidations.
enabled = true
backend = oslo_cache.memcache_pool
memcache_servers = $H:$MEMCACHED_PORT
EOF
}
configure_keystone() {
  mkdir -p "$KS" "$KS/short"
  keystone_conf "$TOKEN_EXPIRATION" "$LOG/keystone.log" >"$KS/keystone.conf"
  # The short-token Keystone: same everything, [token] expiration only.
  keystone_conf "$SHORT_TOKEN_EXPIRATION" "$LOG/keystone-short.log" >"$KS/short/keystone.conf"
  # Same result as `keystone-manage fernet_setup` / `credential_setup` (key files
  # 0 = staged, 1 = primary; each = urlsafe base64 of 32 random bytes, dir 0700)
  # without two more ~5 s keystone imports.
  local repo i
  for repo in "$KS/fernet-keys" "$KS/credential-keys"; do
    [ -s "$repo/0" ] && [ -s "$repo/1" ] && continue
    rm -rf "$repo"; mkdir -m 700 "$repo"
    for i in 0 1; do
      (umask 077; head -c 32 /dev/urandom | base64 -w0 | tr '+/' '-_' >"$repo/$i")
    done
  done
}
setup_keystone_db() {
  # The marker files only count while the database agrees (it may be another
  # server now, or a foreign server whose databases were dropped).
  local n
  n=$(mysql_root -N -B -e "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema='keystone'") \
    || die "cannot query MariaDB"
  [ "$n" -gt 0 ] || rm -f "$KS/.db_synced" "$KS/.bootstrapped"
  if [ -e "$KS/.bootstrapped" ]; then
    n=$(mysql_root -N -B -e "SELECT COUNT(*) FROM keystone.local_user WHERE name='admin'" 2>/dev/null) || n=0
    [ "$n" -gt 0 ] || rm -f "$KS/.bootstrapped"
  fi
  if [ ! -e "$KS/.db_synced" ]; then
    log "keystone-manage db_sync"
    keystone_manage db_sync >>"$LOG/keystone-manage.log" 2>&1 || die "db_sync failed, see $LOG/keystone-manage.log"
    touch "$KS/.db_synced"
  fi
  if [ ! -e "$KS/.bootstrapped" ]; then
    # keystone-manage reads through the memcached cache: drop entries left from
    # an earlier keystone database (else e.g. a cached RegionOne breaks bootstrap).
    wait_for "memcached" port_open "$MEMCACHED_PORT"
    memcached_flush || log "WARNING: memcached flush_all failed"
    log "keystone-manage bootstrap"
    keystone_manage bootstrap --bootstrap-password "$ADMIN_PASS" \
      --bootstrap-username admin --bootstrap-project-name admin \
      --bootstrap-role-name admin --bootstrap-service-name keystone \
      --bootstrap-region-id RegionOne \
      --bootstrap-admin-url "$KS_URL/v3/" --bootstrap-internal-url "$KS_URL/v3/" \
      --bootstrap-public-url "$KS_URL/v3/" >>"$LOG/keystone-manage.log" 2>&1 || die "bootstrap failed"
    touch "$KS/.bootstrapped"
    KS_RESET=1
  fi
}
# start_keystone_uwsgi NAME PORT CONFDIR THREADS: one uWSGI Keystone; its
# process title (and so the pid check) is "NAME uWSGI master".
start_keystone_uwsgi() {
  local name=$1 port=$2 confdir=$3 threads=$4
  if alive "$name" "$name uWSGI master"; then log "$name already running"; return; fi
  check_port_free "$port" "$name"
  # --die-on-term: uWSGI 2.0 otherwise treats SIGTERM as "reload".
  # HTTP router (--http, keep-alive capable) in front of the workers' unix socket.
  # Plain --http-socket closes each connection without "Connection: close", so
  # pooled clients (python-requests, hyper/reqwest) hit "connection reset".
  spawn "$name" "$LOG/$name-uwsgi.log" /usr/bin/uwsgi-core --plugin python3,http \
    --http "$H:$port" --http-keepalive --socket "$RUN/$name-uwsgi.sock" \
    --wsgi-file /usr/bin/keystone-wsgi-public \
    --env "OS_KEYSTONE_CONFIG_DIR=$confdir" --master --processes "$KEYSTONE_PROCESSES" --threads "$threads" \
    --enable-threads --lazy-apps --die-on-term --need-app --buffer-size 65535 \
    --procname-prefix-spaced "$name"
}
start_keystone() {
  start_keystone_uwsgi keystone "$KEYSTONE_PORT" "$KS" "$KEYSTONE_THREADS"
  # Only tests that watch a token expire use it: 2 threads.
  start_keystone_uwsgi keystone-short "$KEYSTONE_SHORT_PORT" "$KS/short" 2
}
provision_keystone() {
  # Idempotent find-or-create of projects/users/roles/catalog; prints KEY=VALUE.
  KS_URL=$KS_URL ADMIN_PASS=$ADMIN_PASS SERVICE_PASS=$SERVICE_PASS SWIFT_SERVICE_PASS=$SWIFT_SERVICE_PASS \
  DEMO_PASS=$DEMO_PASS READER_PASS=$READER_PASS ALT_PASS=$ALT_PASS SWIFT_URL=$SWIFT_URL \
  GLANCE=$GLANCE GLANCE_SERVICE_PASS=$GLANCE_SERVICE_PASS GLANCE_URL=$GLANCE_URL \
  "$PY" - <<'PYEOF'
# stdlib only: importing keystoneclient costs seconds of CPU on a busy 2-core box
import json, os, urllib.request, urllib.error
E = os.environ
KS = E['KS_URL'] + '/v3'
def call(method, path, body=None, token=None):
    req = urllib.request.Request(KS + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None)
    req.add_header('Content-Type', 'application/json')
    if token:
        req.add_header('X-Auth-Token', token)
    with urllib.request.urlopen(req, timeout=60) as r:
        data = r.read()
        return r.headers, (json.loads(data) if data else None)
hdrs, _ = call('POST', '/auth/tokens', {'auth': {
    'identity': {'methods': ['password'], 'password': {'user': {
        'name': 'admin', 'domain': {'id': 'default'}, 'password': E['ADMIN_PASS']}}},
    'scope': {'project': {'name': 'admin', 'domain': {'id': 'default'}}}}})
T = hdrs['X-Subject-Token']
def find_or_create(coll, key, query, body):
    _, r = call('GET', '/%s?%s' % (coll, query), token=T)
    if r[coll]:
        return r[coll][0]['id']
    return call('POST', '/' + coll, {key: body}, token=T)[1][key]['id']
def role(name):
    return find_or_create('roles', 'role', 'name=' + name, {'name': name})
def project(name, desc):
    return find_or_create('projects', 'project', 'domain_id=default&name=' + name,
                          {'name': name, 'domain_id': 'default', 'description': desc})
def user(name, pw, proj, roles):
    uid = find_or_create('users', 'user', 'domain_id=default&name=' + name,
                         {'name': name, 'domain_id': 'default', 'password': pw,
                          'default_project_id': proj})
    for r in roles:                                   # PUT: idempotent
        call('PUT', '/projects/%s/users/%s/roles/%s' % (proj, uid, r), token=T)
    return uid
def catalog(name, stype, desc, want):
    svc = find_or_create('services', 'service', 'type=' + stype,
                         {'name': name, 'type': stype, 'description': desc})
    have = {e['interface']: e for e in call('GET', '/endpoints?service_id=' + svc, token=T)[1]['endpoints']}
    for iface, url in want.items():
        if iface not in have:
            have[iface] = call('POST', '/endpoints', {'endpoint': {
                'service_id': svc, 'interface': iface, 'url': url, 'region_id': 'RegionOne'}}, token=T)[1]['endpoint']
        elif have[iface]['url'] != url:
            call('PATCH', '/endpoints/' + have[iface]['id'], {'endpoint': {'url': url}}, token=T)
    return svc, have['public']['id']
admin, member, reader = role('admin'), role('member'), role('reader')
service_role, _ = role('service'), role('ResellerAdmin')
service = project('service', 'service users (ekko, swift)')
demo = project('demo', 'Ekko integration tests: main tenant')
alt = project('alt_demo', 'Ekko integration tests: second tenant (isolation)')
ekko_uid = user('ekko', E['SERVICE_PASS'], service, [admin, service_role])
user('swift', E['SWIFT_SERVICE_PASS'], service, [admin, service_role])
user('demo', E['DEMO_PASS'], demo, [member])
user('demo-reader', E['READER_PASS'], demo, [reader])
user('alt', E['ALT_PASS'], alt, [member])
catalog('swift', 'object-store', 'Swift object store',
        {'public': E['SWIFT_URL'] + '/v1/AUTH_%(project_id)s',
         'internal': E['SWIFT_URL'] + '/v1/AUTH_%(project_id)s',
         'admin': E['SWIFT_URL'] + '/v1'})
if E['GLANCE'] == '1':
    # service + admin in the service project, as devstack gives it
    glance = user('glance', E['GLANCE_SERVICE_PASS'], service, [admin, service_role])
    # oslo.limit reads every project's limits: a project-scoped token only
    # sees its own project's (GET /v3/limits), a system-scoped one all.
    call('PUT', '/system/users/%s/roles/%s' % (glance, reader), token=T)
    svc, endpoint = catalog('glance', 'image', 'Glance image service',
                            {i: E['GLANCE_URL'] for i in ('public', 'internal', 'admin')})
    # Unified limits: a resource without a registered limit has limit 0 (no
    # image could even be created). Large defaults; a test sets a small one
    # for its own project. Sizes in MiB.
    want = {'image_size_total': 1048576, 'image_stage_total': 1048576,
            'image_count_total': 10000, 'image_count_uploading': 100}
    have = {r['resource_name']: r for r in call(
        'GET', '/registered_limits?service_id=%s&region_id=RegionOne' % svc, token=T)[1]['registered_limits']}
    new = [{'service_id': svc, 'region_id': 'RegionOne', 'resource_name': k, 'default_limit': v}
           for k, v in want.items() if k not in have]
    if new:
        call('POST', '/registered_limits', {'registered_limits': new}, token=T)
    for k, v in want.items():
        if k in have and have[k]['default_limit'] != v:
            call('PATCH', '/registered_limits/' + have[k]['id'],
                 {'registered_limit': {'default_limit': v}}, token=T)
    print('GLANCE_ENDPOINT_ID=%s' % endpoint)
# EC2 credentials of the ekko user in the service project: Ekko's S3 store
# signs with them, s3token has Keystone check the signatures.
ec2 = [c for c in call('GET', '/users/%s/credentials/OS-EC2' % ekko_uid, token=T)[1]['credentials']
       if c['tenant_id'] == service]
if not ec2:
    ec2 = [call('POST', '/users/%s/credentials/OS-EC2' % ekko_uid, {'tenant_id': service},
                token=T)[1]['credential']]
print('S3_ACCESS_KEY=%s' % ec2[0]['access'])
print('S3_SECRET_KEY=%s' % ec2[0]['secret'])
# A second S3 account (its own project, so its own Swift account and
# buckets): the off-site store replication copies into, independent of the
# first store's containers.
replica_proj = project('ekko_replica', 'Ekko integration tests: the second store (replication)')
replica_uid = user('ekko-replica', E['SERVICE_PASS'], replica_proj, [member])
ec2r = [c for c in call('GET', '/users/%s/credentials/OS-EC2' % replica_uid, token=T)[1]['credentials']
        if c['tenant_id'] == replica_proj]
if not ec2r:
    ec2r = [call('POST', '/users/%s/credentials/OS-EC2' % replica_uid, {'tenant_id': replica_proj},
                 token=T)[1]['credential']]
print('S3_REPLICA_ACCESS_KEY=%s' % ec2r[0]['access'])
print('S3_REPLICA_SECRET_KEY=%s' % ec2r[0]['secret'])
print('SERVICE_PROJECT_ID=%s' % service)
print('DEMO_PROJECT_ID=%s' % demo)
print('ALT_PROJECT_ID=%s' % alt)
PYEOF
}

# ---------------------------------------------------------------- Swift
SW=$STATE/swift
mount_swift_disk() {
  local dev=$SW/node/d1 img=$SW/d1.xfs.img
  mkdir -p "$dev"
  [ "$SWIFT_DISK" = xfs ] || return 0
  mountpoint -q "$dev" && return 0
  if [ ! -s "$img" ]; then
    if ! { truncate -s "$SWIFT_DISK_SIZE" "$img" && mkfs.xfs -q -f "$img"; }; then
      rm -f "$img"; log "WARNING: mkfs.xfs failed; Swift uses a plain directory"; return 0
    fi
  fi
  if mount -o loop,noatime "$img" "$dev" 2>>"$LOG/swift-mount.log"; then
    log "Swift device: XFS image $img mounted on $dev"
  else
    log "WARNING: cannot loop-mount $img (see $LOG/swift-mount.log); Swift uses a plain directory"
  fi
}
configure_swift() {
  mount_swift_disk
  mkdir -p "$SW/cache"
  # Servers read /etc/swift/swift.conf (path is hard-coded in swift 2.30).
  if ! grep -q '^swift_hash_path_suffix' /etc/swift/swift.conf 2>/dev/null; then
    mkdir -p /etc/swift
    printf '[swift-hash]\nswift_hash_path_suffix = ekko-test\nswift_hash_path_prefix = ekko-test\n\n[storage-policy:0]\nname = Policy-0\ndefault = yes\n' >/etc/swift/swift.conf
  fi
  local kind port
  for kind in account container object; do
    case $kind in account) port=$SWIFT_ACCOUNT_PORT;; container) port=$SWIFT_CONTAINER_PORT;; object) port=$SWIFT_OBJECT_PORT;; esac
    cat >"$SW/$kind-server.conf" <<EOF
[DEFAULT]
bind_ip = $H
bind_port = $port
workers = 0
user = root
swift_dir = $SW
devices = $SW/node
mount_check = false
disable_fallocate = true
log_level = INFO

[pipeline:main]
pipeline = healthcheck $kind-server

[app:$kind-server]
use = egg:swift#$kind

[filter:healthcheck]
use = egg:swift#healthcheck
EOF
  done
  # One replica, one device "d1" (a plain directory: mount_check=false), part
  # power 8. Same as `swift-ring-builder X.builder create 8 1 1; add
  # r1z1-127.0.0.1:PORT/d1 100; rebalance`, but one python start instead of 9.
  if [ ! -s "$SW/account.ring.gz" ] || [ ! -s "$SW/container.ring.gz" ] || [ ! -s "$SW/object.ring.gz" ]; then
    SW=$SW H=$H A=$SWIFT_ACCOUNT_PORT C=$SWIFT_CONTAINER_PORT O=$SWIFT_OBJECT_PORT "$PY" - <<'PYEOF'
import os
from swift.common.ring import RingBuilder
E = os.environ
for kind, port in (('account', E['A']), ('container', E['C']), ('object', E['O'])):
    b = RingBuilder(8, 1, 1)
    b.add_dev({'id': 0, 'region': 1, 'zone': 1, 'ip': E['H'], 'port': int(port),
               'replication_ip': E['H'], 'replication_port': int(port),
               'device': 'd1', 'weight': 100, 'meta': ''})
    b.rebalance()
    b.save(os.path.join(E['SW'], kind + '.builder'))
    b.get_ring().save(os.path.join(E['SW'], kind + '.ring.gz'))
PYEOF
    log "built swift rings"
  fi
  cat >"$SW/proxy-server.conf.new" <<EOF
[DEFAULT]
bind_ip = $H
bind_port = $SWIFT_PORT
workers = 0
user = root
swift_dir = $SW
log_level = INFO

[pipeline:main]
# s3api + s3token: the same proxy answers S3 (Ekko's S3 store is tested
# against it), signatures checked by Keystone against EC2 credentials.
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk tempurl authtoken s3api s3token keystoneauth copy container-quotas account-quotas slo dlo versioned_writes symlink proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true

[filter:authtoken]
paste.filter_factory = keystonemiddleware.auth_token:filter_factory
www_authenticate_uri = $KS_URL/v3
auth_url = $KS_URL/v3
auth_type = password
interface = public
region_name = RegionOne
project_domain_id = default
user_domain_id = default
project_name = service
username = swift
password = $SWIFT_SERVICE_PASS
delay_auth_decision = true
cache = swift.cache
include_service_catalog = false
service_token_roles_required = true

[filter:s3api]
use = egg:swift#s3api
# path-style addressing (no wildcard DNS here); SigV4 region us-east-1
location = us-east-1

[filter:s3token]
use = egg:swift#s3token
auth_uri = $KS_URL/v3
http_timeout = 10.0
# Keystone's POST /v3/s3tokens wants a service (or admin) token since the
# 2025 fix against presigned-URL abuse (Debian's 22.0.2-0+deb12u1): s3token
# authenticates as the swift user. With it, secrets are cached in memcached
# for a minute and most requests are checked without asking Keystone.
auth_type = password
auth_url = $KS_URL/v3
project_domain_id = default
user_domain_id = default
project_name = service
username = swift
password = $SWIFT_SERVICE_PASS
region_name = RegionOne
secret_cache_duration = 60

[filter:keystoneauth]
use = egg:swift#keystoneauth
operator_roles = admin, member
project_reader_roles = reader
reseller_admin_role = ResellerAdmin

[filter:cache]
use = egg:swift#memcache
memcache_servers = $H:$MEMCACHED_PORT

[filter:catch_errors]
use = egg:swift#catch_errors
[filter:gatekeeper]
use = egg:swift#gatekeeper
[filter:healthcheck]
use = egg:swift#healthcheck
[filter:proxy-logging]
use = egg:swift#proxy_logging
[filter:listing_formats]
use = egg:swift#listing_formats
[filter:bulk]
use = egg:swift#bulk
[filter:tempurl]
use = egg:swift#tempurl
[filter:copy]
use = egg:swift#copy
[filter:container-quotas]
use = egg:swift#container_quotas
[filter:account-quotas]
use = egg:swift#account_quotas
[filter:slo]
use = egg:swift#slo
[filter:dlo]
use = egg:swift#dlo
[filter:versioned_writes]
use = egg:swift#versioned_writes
[filter:symlink]
use = egg:swift#symlink
EOF
  # A changed pipeline needs a new proxy (this runs before start_swift).
  if cmp -s "$SW/proxy-server.conf.new" "$SW/proxy-server.conf"; then
    rm -f "$SW/proxy-server.conf.new"
  else
    mv "$SW/proxy-server.conf.new" "$SW/proxy-server.conf"
    stop_ours swift-proxy swift-proxy-server "restarting (new proxy-server.conf)"
  fi
}
start_swift() {
  local kind port
  for kind in account container object proxy; do
    case $kind in account) port=$SWIFT_ACCOUNT_PORT;; container) port=$SWIFT_CONTAINER_PORT;;
                  object) port=$SWIFT_OBJECT_PORT;; proxy) port=$SWIFT_PORT;; esac
    if alive "swift-$kind" "swift-$kind-server"; then log "swift-$kind already running"; continue; fi
    check_port_free "$port" "swift-$kind"
    # -v: also log to stdout (no syslog on these machines)
    spawn "swift-$kind" "$LOG/swift-$kind.log" /usr/bin/python3 "/usr/bin/swift-$kind-server" "$SW/$kind-server.conf" -v
  done
}

# ---------------------------------------------------------------- Glance
GL=$STATE/glance
GLANCE_RESTART=0               # 1 = its config changed: restart a running glance-api
ENV_GLANCE_URL=                # EKKO_GLANCE_URL in env.sh: set once Glance answers
glance_manage() { glance-manage --config-file "$GL/glance-manage.conf" "$@"; }
detect_glance() {
  if [ "$GLANCE" = 0 ]; then log "Glance: skipped (EKKO_OS_GLANCE=0)"; return 0; fi
  # Not in PKGS: python3-glance depends on qemu-utils, which must come from
  # bookworm-backports first (tools/install-deps.sh does both, in that order).
  if [ ! -x /usr/bin/glance-api ] || ! command -v glance-manage >/dev/null; then
    log "WARNING: glance-api is not installed (tools/install-deps.sh installs it): EKKO_GLANCE_URL stays empty"
    GLANCE=0
  fi
}
setup_glance_db() {
  mkdir -p "$GL"
  cat >"$GL/glance-manage.conf" <<EOF
[DEFAULT]
log_file = $LOG/glance-manage.log
use_stderr = false
[database]
connection = mysql+pymysql://glance:$GLANCE_DB_PASS@$H:$MYSQL_PORT/glance?charset=utf8
EOF
  # The marker only counts while the database has tables (see setup_keystone_db).
  local n
  n=$(mysql_root -N -B -e "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema='glance'") \
    || die "cannot query MariaDB"
  [ "$n" -gt 0 ] || rm -f "$GL/.db_synced"
  [ ! -e "$GL/.db_synced" ] || return 0
  log "glance-manage db_sync"
  glance_manage db_sync >>"$LOG/glance-manage.log" 2>&1 || die "glance db_sync failed, see $LOG/glance-manage.log"
  touch "$GL/.db_synced"
}
# configure_glance: glance-api.conf (needs GLANCE_ENDPOINT_ID from the Keystone
# provisioning); GLANCE_RESTART=1 when it changed.
configure_glance() {
  mkdir -p "$GL/images" "$GL/staging" "$GL/lock"
  cat >"$GL/glance-api.conf.new" <<EOF
[DEFAULT]
bind_host = $H
bind_port = $GLANCE_PORT
# One API worker (2-core machine): glance-api is then a parent and one child.
workers = 1
log_file = $LOG/glance-api.log
use_stderr = false
# Where the glance-direct import method stages data (single-store form).
node_staging_uri = file://$GL/staging
# The default, 1 TiB: tests hit the quota below, not this cap.
image_size_cap = 1099511627776
# Quotas from Keystone's unified limits (per project; see the header).
# user_storage_quota, the legacy option, is global only and ignored now.
use_keystone_limits = true

[database]
connection = mysql+pymysql://glance:$GLANCE_DB_PASS@$H:$MYSQL_PORT/glance?charset=utf8

[glance_store]
stores = file
default_store = file
filesystem_store_datadir = $GL/images

[paste_deploy]
flavor = keystone
config_file = /etc/glance/glance-api-paste.ini

[keystone_authtoken]
www_authenticate_uri = $KS_URL/v3
auth_url = $KS_URL/v3
auth_type = password
interface = public
region_name = RegionOne
project_domain_id = default
user_domain_id = default
project_name = service
username = glance
password = $GLANCE_SERVICE_PASS
memcached_servers = $H:$MEMCACHED_PORT
# An X-Service-Token counts only if its user has the service role; with one,
# an expired X-Auth-Token is still accepted (validated with allow_expired=1,
# up to Keystone's [token] allow_expired_window), as Nova/Cinder rely on.
service_token_roles = service
service_token_roles_required = true

[oslo_limit]
# System scope: the only one that lists every project's limits.
auth_url = $KS_URL/v3
auth_type = password
user_domain_id = default
username = glance
password = $GLANCE_SERVICE_PASS
system_scope = all
endpoint_id = $GLANCE_ENDPOINT_ID

[oslo_concurrency]
lock_path = $GL/lock
EOF
  if cmp -s "$GL/glance-api.conf.new" "$GL/glance-api.conf"; then
    rm -f "$GL/glance-api.conf.new"
  else
    mv "$GL/glance-api.conf.new" "$GL/glance-api.conf"
    GLANCE_RESTART=1
  fi
}
start_glance() {
  if alive glance-api glance-api; then log "glance-api already running"; return; fi
  check_port_free "$GLANCE_PORT" glance-api
  # The eventlet server, not Debian's init script (glance-wsgi-api under
  # uWSGI, which needs extra options for chunked uploads): it takes
  # bind_host/bind_port/workers from the conf.
  spawn glance-api "$LOG/glance-api.out" /usr/bin/python3 /usr/bin/glance-api --config-file "$GL/glance-api.conf"
}

# ---------------------------------------------------------------- libvirt
ENV_LIBVIRT_URI=               # EKKO_LIBVIRT_URI in env.sh: set once virsh answers
LIBVIRT_STARTED=0              # 1 = libvirt is (being) started: wait for it
# pidfile_alive FILE PATTERN: the pid in FILE is alive and its cmdline matches.
pidfile_alive() {
  local pid
  [ -s "$1" ] || return 1
  pid=$(cat "$1")
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$2"
}
# start_libvirt_daemon NAME: `NAME -d` unless running (ours: $RUN/NAME.pid;
# anyone's: /run/NAME.pid). -d returns once the daemon holds its pid file.
start_libvirt_daemon() {
  local name=$1
  if alive "$name" "$name"; then log "$name already running"; return 0; fi
  rm -f "$RUN/$name.pid"
  if pidfile_alive "/run/$name.pid" "$name"; then
    log "$name already running (pid $(cat "/run/$name.pid"), not started by this script: left alone)"
    return 0
  fi
  # stdio away from our stdout: `$(bash tools/test-env.sh)` must not wait on the daemon.
  # On CPU 0: libvirt keeps QEMU's probed capabilities only while the host
  # CPUID it reads at start is the same, and under a VM leaf 1 carries the
  # APIC id of the CPU it ran on: started on another CPU, libvirtd re-probes
  # (~8 s here instead of 0.1 s). QEMU processes still get all host CPUs.
  LIBVIRT_LOG_OUTPUTS="3:file:$LOG/$name.log" taskset -c 0 "$name" -d </dev/null >>"$LOG/$name.out" 2>&1 \
    || die "$name -d failed (see $LOG/$name.out and $LOG/$name.log)"
  pidfile_alive "/run/$name.pid" "$name" || die "$name did not start (see $LOG/$name.log)"
  cp "/run/$name.pid" "$RUN/$name.pid"
  log "started $name ($(cat "$RUN/$name.pid"))"
}
start_libvirt() {
  if [ "$LIBVIRT" = 0 ]; then log "libvirt: skipped (EKKO_OS_LIBVIRT=0)"; return 0; fi
  if ! command -v libvirtd >/dev/null || ! command -v virtlogd >/dev/null || ! command -v virsh >/dev/null; then
    log "WARNING: libvirt is not installed (tools/install-deps.sh installs it): EKKO_LIBVIRT_URI stays empty"
    return 0
  fi
  # /dev/kvm present but root-only (unusable here): libvirt re-probes QEMU's
  # capabilities on every lookup; udev's usual mode makes it settle once.
  if [ -c /dev/kvm ] && getent group kvm >/dev/null; then
    if ! { chgrp kvm /dev/kvm && chmod 0660 /dev/kvm; }; then log "WARNING: cannot set root:kvm 0660 on /dev/kvm"; fi
  fi
  start_libvirt_daemon virtlogd
  start_libvirt_daemon libvirtd
  LIBVIRT_STARTED=1
}
wait_libvirt() {
  [ "$LIBVIRT_STARTED" = 1 ] || return 0
  # The first answer on a new machine takes ~12 s (libvirt probes QEMU once).
  wait_for "libvirtd ($LIBVIRT_URI)" virsh -c "$LIBVIRT_URI" version
  ENV_LIBVIRT_URI=$LIBVIRT_URI
}

# ---------------------------------------------------------------- main
case "${1:-}" in
  '') ;;
  glance-stop)
    stop_ours glance-api glance-api stopping
    exit 0 ;;
  glance-start)
    # With the conf the last full run wrote (Keystone etc. must be up).
    [ -s "$GL/glance-api.conf" ] || die "no $GL/glance-api.conf: run tools/test-env.sh first"
    start_glance
    wait_for "glance-api" http_ok "$GLANCE_URL/healthcheck"
    exit 0 ;;
  *) die "unknown argument '$1' (none, glance-stop or glance-start)" ;;
esac
log "state dir: $STATE"
detect_mariadb            # foreign MariaDB/RabbitMQ: settle before starting anything
detect_rabbitmq
detect_glance
start_rabbitmq            # slowest to boot: start first, wait last
start_libvirt             # probes QEMU in the background; waited for at the end
start_memcached
PROXY_WAS_RUNNING=0
if alive swift-proxy swift-proxy-server; then PROXY_WAS_RUNNING=1; fi
# Swift rings/servers and Keystone key repos in parallel with MariaDB's init.
( configure_swift; start_swift ) & SWIFT_BG=$!
( configure_keystone ) & KS_BG=$!
start_mariadb
wait_for "MariaDB" mysql_root -e 'SELECT 1'
provision_mariadb
# glance-manage db_sync (seconds: imports, ~30 migrations) in parallel with Keystone's.
if [ "$GLANCE" = 1 ]; then ( setup_glance_db ) & GLANCE_DB_BG=$!; fi
wait $KS_BG || die "Keystone configuration failed (see $LOG/keystone-manage.log)"
KS_RESET=0                # 1 = keystone bootstrapped now (its database is new)
setup_keystone_db
# A Keystone / Swift proxy still running from an earlier keystone database would
# keep stale cached state and service tokens (404 "Could not find project").
if [ "$KS_RESET" = 1 ]; then
  stop_ours keystone "keystone uWSGI master"
  stop_ours keystone-short "keystone-short uWSGI master"
fi
wait_for "memcached" port_open "$MEMCACHED_PORT"
start_keystone
wait $SWIFT_BG || die "Swift configuration/start failed"
if [ "$KS_RESET" = 1 ] && [ "$PROXY_WAS_RUNNING" = 1 ]; then
  stop_ours swift-proxy swift-proxy-server
  start_swift
fi
wait_for "Keystone" http_ok "$KS_URL/v3"
IDS=$(provision_keystone) || die "Keystone provisioning failed"
eval "$IDS"
log "Keystone provisioned"
if [ "$GLANCE" = 1 ]; then
  configure_glance
  wait "$GLANCE_DB_BG" || die "Glance database setup failed (see $LOG/glance-manage.log)"
  # A changed conf, or a Keystone database newer than the running glance-api
  # (stale endpoint id and cached service token): restart it.
  if [ "$GLANCE_RESTART" = 1 ] || [ "$KS_RESET" = 1 ]; then stop_ours glance-api glance-api; fi
  start_glance
fi
wait_for "Keystone (short tokens, $KS_SHORT_URL)" http_ok "$KS_SHORT_URL/v3"
wait_for "swift-account" http_ok "http://$H:$SWIFT_ACCOUNT_PORT/healthcheck"
wait_for "swift-container" http_ok "http://$H:$SWIFT_CONTAINER_PORT/healthcheck"
wait_for "swift-object" http_ok "http://$H:$SWIFT_OBJECT_PORT/healthcheck"
wait_for "swift-proxy" http_ok "$SWIFT_URL/healthcheck"
[ "$AMQP_MODE" != own ] || wait_for "RabbitMQ" port_open "$AMQP_PORT"
if [ "$GLANCE" = 1 ]; then
  wait_for "glance-api" http_ok "$GLANCE_URL/healthcheck"
  ENV_GLANCE_URL=$GLANCE_URL
fi

# demo_token KEYSTONE_URL: a demo-scoped token.
demo_token() {
  curl -fsS -D - -o /dev/null -H 'Content-Type: application/json' "$1/v3/auth/tokens" -d \
    '{"auth":{"identity":{"methods":["password"],"password":{"user":{"name":"demo","domain":{"id":"default"},"password":"'"$DEMO_PASS"'"}}},"scope":{"project":{"name":"demo","domain":{"id":"default"}}}}}' \
    | awk -F': ' 'tolower($1)=="x-subject-token"{print $2}' | tr -d '\r'
}
# End-to-end smoke: demo token -> HEAD its Swift account (auto-creates it).
smoke() {
  local tok
  tok=$(demo_token "$KS_URL")
  [ -n "$tok" ] && curl -fsS -o /dev/null -I -H "X-Auth-Token: $tok" "$SWIFT_URL/v1/AUTH_$DEMO_PROJECT_ID"
}
# A token of the short-token Keystone, validated by the main one (Swift's or
# Glance's authtoken): both share the keys.
smoke_short() {
  local tok
  tok=$(demo_token "$KS_SHORT_URL")
  [ -n "$tok" ] || return 1
  if [ "$GLANCE" = 1 ]; then
    curl -fsS -o /dev/null -H "X-Auth-Token: $tok" "$GLANCE_URL/v2/images?limit=1"
  else
    curl -fsS -o /dev/null -I -H "X-Auth-Token: $tok" "$SWIFT_URL/v1/AUTH_$DEMO_PROJECT_ID"
  fi
}
wait_for "end-to-end (Keystone token -> Swift)" smoke
wait_for "end-to-end (short Keystone token -> $([ "$GLANCE" = 1 ] && echo Glance || echo Swift))" smoke_short
wait_libvirt

cat >"$STATE/env.sh" <<EOF
# generated by tools/test-env.sh
export OS_AUTH_URL=$KS_URL/v3
export OS_IDENTITY_API_VERSION=3
export OS_REGION_NAME=RegionOne
export OS_USER_DOMAIN_NAME=Default
export OS_PROJECT_DOMAIN_NAME=Default
export OS_USERNAME=admin
export OS_PASSWORD=$ADMIN_PASS
export OS_PROJECT_NAME=admin
export EKKO_KEYSTONE_URL=$KS_URL
export EKKO_KEYSTONE_AUTH_URL=$KS_URL/v3
export EKKO_SWIFT_URL=$SWIFT_URL
export EKKO_S3_ENDPOINT=$SWIFT_URL
export EKKO_S3_REGION=us-east-1
export EKKO_S3_ACCESS_KEY=$S3_ACCESS_KEY
export EKKO_S3_SECRET_KEY=$S3_SECRET_KEY
export EKKO_S3_REPLICA_ACCESS_KEY=$S3_REPLICA_ACCESS_KEY
export EKKO_S3_REPLICA_SECRET_KEY=$S3_REPLICA_SECRET_KEY
export EKKO_KEYSTONE_SHORT_URL=$KS_SHORT_URL
export EKKO_KEYSTONE_SHORT_AUTH_URL=$KS_SHORT_URL/v3
export EKKO_KEYSTONE_SHORT_TOKEN_TTL=$SHORT_TOKEN_EXPIRATION
export EKKO_GLANCE_URL=$ENV_GLANCE_URL
export EKKO_SERVICE_USERNAME=ekko
export EKKO_SERVICE_PASSWORD=$SERVICE_PASS
export EKKO_SERVICE_PROJECT=service
export EKKO_SERVICE_PROJECT_ID=$SERVICE_PROJECT_ID
export EKKO_DEMO_USERNAME=demo
export EKKO_DEMO_PASSWORD=$DEMO_PASS
export EKKO_DEMO_PROJECT=demo
export EKKO_DEMO_PROJECT_ID=$DEMO_PROJECT_ID
export EKKO_READER_USERNAME=demo-reader
export EKKO_READER_PASSWORD=$READER_PASS
export EKKO_ALT_USERNAME=alt
export EKKO_ALT_PASSWORD=$ALT_PASS
export EKKO_ALT_PROJECT=alt_demo
export EKKO_ALT_PROJECT_ID=$ALT_PROJECT_ID
export EKKO_DATABASE_URL=mysql://ekko:$DB_PASS@$H:$MYSQL_PORT/ekko
export EKKO_DB_HOST=$H
export EKKO_DB_PORT=$MYSQL_PORT
export EKKO_DB_USER=ekko
export EKKO_DB_PASSWORD=$DB_PASS
export EKKO_DB_NAME=ekko
export EKKO_MYSQL_SOCKET=$(printf %q "$ENV_MYSQL_SOCKET")
export EKKO_AMQP_URL=$(printf %q "$AMQP_URL")
export EKKO_MEMCACHED=$H:$MEMCACHED_PORT
export EKKO_LIBVIRT_URI=$ENV_LIBVIRT_URI
export EKKO_OS_STATE=$STATE
EOF
cat "$STATE/env.sh"
log "all services ready (env also in $STATE/env.sh)"
