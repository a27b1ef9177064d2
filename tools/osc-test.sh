#!/usr/bin/env bash
# tools/osc-test.sh - the `openstack ekko ...` CLI plugin (python-ekkoclient)
# end to end: installs the plugin into the venv, runs its unit tests, starts
# a whole Ekko behind the real Keystone and MariaDB (tools/lib/stack.sh),
# registers it in the Keystone catalog as devstack would (service `ekko`,
# type `instance-backup`), then drives the real `openstack` command through
# the catalog as the demo member, the alt member and the admin, asserting on
# every output and exit code. With Glance in the test environment
# (EKKO_GLANCE_URL), the demo member restores a backup into raw and qcow2
# images and checks them with `openstack image show/save` (skipped, with a
# log line, only when the environment has no Glance).
#
#   tools/osc-test.sh          (test environment running: tools/test-env.sh)
#
# Env: EKKO_VENV (default /opt/ekko-venv, from tools/install-deps.sh),
# EKKO_NO_BUILD=1 to use target/debug as is, EKKO_KEEP_STACK=1 to keep the
# stack directory.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
VENV=${EKKO_VENV:-/opt/ekko-venv}
OPENSTACK="$VENV/bin/openstack"
T0=$SECONDS

log() { printf '[osc-test] %s\n' "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }

[ -x "$OPENSTACK" ] || die "$OPENSTACK missing: run tools/install-deps.sh (or set EKKO_VENV)"

W=$(mktemp -d /tmp/ekko-osc.XXXXXX)
SERVICE_ID=''
ENDPOINT_ID=''
IMAGES=()      # Glance images this run made (deleted at exit)
IMAGE_NAMES=() # and their names, for one whose id was never printed

# shellcheck disable=SC1091  # checked on its own
. "$ROOT/tools/lib/stack.sh"

# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  local rc=$?
  if [ "$rc" -ne 0 ] && [ -n "${STACK_DIR:-}" ] && [ -f "$STACK_DIR/ekko.log" ]; then
    log "ekko log (last 30 lines):"
    tail -30 "$STACK_DIR/ekko.log" | sed 's/\x1b\[[0-9;]*m//g' >&2 || true
  fi
  if [ -n "$ENDPOINT_ID" ]; then
    admin endpoint delete "$ENDPOINT_ID" >/dev/null 2>&1 || true
  fi
  local i n
  for n in "${IMAGE_NAMES[@]}"; do
    for i in $(demo image list --private --name "$n" -f value -c ID 2>/dev/null); do IMAGES+=("$i"); done
  done
  for i in "${IMAGES[@]}"; do admin image delete "$i" >/dev/null 2>&1 || true; done
  stack_stop
  rm -rf "$W"
}
trap cleanup EXIT

# --------------------------------------------------------------- checks
PASSED=0
FAILED=()
pass() { PASSED=$((PASSED + 1)); printf '  ok    %s\n' "$1"; }
fail() { FAILED+=("$1"); printf '  FAIL  %s\n' "$1"; }
# check DESCRIPTION COMMAND...: one assertion.
check() {
  local what=$1
  shift
  if "$@"; then pass "$what"; else fail "$what"; fi
}

# The openstack CLI as one of the test users, always through the catalog
# (never an endpoint override).
# shellcheck disable=SC2317  # also called from the EXIT trap
admin() {
  env -u OS_EKKO_ENDPOINT -u OS_CLOUD "$OPENSTACK" "$@"
}
demo() {
  env -u OS_EKKO_ENDPOINT -u OS_CLOUD OS_USERNAME="$EKKO_DEMO_USERNAME" \
    OS_PASSWORD="$EKKO_DEMO_PASSWORD" OS_PROJECT_NAME="$EKKO_DEMO_PROJECT" \
    "$OPENSTACK" "$@"
}
alt() {
  env -u OS_EKKO_ENDPOINT -u OS_CLOUD OS_USERNAME="$EKKO_ALT_USERNAME" \
    OS_PASSWORD="$EKKO_ALT_PASSWORD" OS_PROJECT_NAME="$EKKO_ALT_PROJECT" \
    "$OPENSTACK" "$@"
}
# The demo project's reader (role reader only).
reader() {
  env -u OS_EKKO_ENDPOINT -u OS_CLOUD OS_USERNAME="$EKKO_READER_USERNAME" \
    OS_PASSWORD="$EKKO_READER_PASSWORD" OS_PROJECT_NAME="$EKKO_DEMO_PROJECT" \
    "$OPENSTACK" "$@"
}

# run NAME WHO ARGS...: run `openstack ARGS` as WHO; stdout in $W/NAME.out,
# stderr in $W/NAME.err, exit code in RC (never aborts the script).
RC=0
run() {
  local name=$1 who=$2
  shift 2
  RC=0
  "$who" "$@" >"$W/$name.out" 2>"$W/$name.err" || RC=$?
  echo "$RC" >"$W/$name.rc"
  if [ "$RC" -ne 0 ]; then
    printf '        (%s: exit %s: %s)\n' "$name" "$RC" "$(tail -1 "$W/$name.err")"
  fi
}
# must NAME WHO ARGS...: run, and stop here if it failed (later checks need it).
must() {
  run "$@"
  if [ "$RC" -ne 0 ]; then
    fail "$1 exits 0"
    summary
    exit 1
  fi
}
# js NAME PYTHON-EXPR: the expression over d = the JSON output of run NAME.
js() {
  python3 - "$W/$1.out" "$2" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
v = eval(sys.argv[2], {"d": d})
print(json.dumps(v) if isinstance(v, bool) or v is None else v)
PY
}
# jtrue NAME PYTHON-EXPR: run NAME exited 0 and the expression holds on its
# JSON output.
jtrue() {
  [ "$(rc_of "$1")" -eq 0 ] && [ "$(js "$1" "bool($2)" 2>/dev/null)" = true ]
}
# succeeded NAME: run NAME exited 0.
succeeded() { [ "$(rc_of "$1")" -eq 0 ]; }
# fails_with NAME REGEX: run NAME failed and said REGEX on stderr.
fails_with() { [ "$(rc_of "$1")" -ne 0 ] && grep -Eq -- "$2" "$W/$1.err"; }
# exits_with NAME CODE REGEX: run NAME exited CODE and said REGEX on stderr.
exits_with() { [ "$(rc_of "$1")" -eq "$2" ] && grep -Eq -- "$3" "$W/$1.err"; }
# failed NAME: run NAME exited non-zero.
failed() { [ "$(rc_of "$1")" -ne 0 ]; }
# has NAME REGEX [out|err]: run NAME printed REGEX.
has() { grep -Eq -- "$2" "$W/$1.${3:-out}"; }
# lines NAME N: run NAME printed N lines.
lines() { [ "$(wc -l <"$W/$1.out")" -eq "$2" ]; }
# line NAME N REGEX: line N of run NAME's output matches REGEX.
line() { sed -n "${2}p" "$W/$1.out" | grep -Eq -- "$3"; }
rc_of() { cat "$W/$1.rc"; }

summary() {
  local took=$((SECONDS - T0))
  echo
  echo "osc-test: ${PASSED} checks passed, ${#FAILED[@]} failed (${took}s)"
  local f
  for f in "${FAILED[@]}"; do echo "  failed: $f"; done
}

# ------------------------------------------------------- plugin and units
log "installing python-ekkoclient into $VENV"
# A copy, so that the build leaves nothing in the source tree; no network
# (pbr and setuptools come pinned from tools/requirements/osc.txt). The copy
# has no .git, so pbr takes the version from PBR_VERSION: Ekko's own.
EKKO_VERSION=$(awk -F'"' '/^version *=/ {print $2; exit}' "$ROOT/Cargo.toml")
[ -n "$EKKO_VERSION" ] || die "no version in Cargo.toml"
cp -r "$ROOT/python-ekkoclient" "$W/src"
rm -rf "$W/src/build" "$W/src"/*.egg-info "$W/src/AUTHORS" "$W/src/ChangeLog"
PBR_VERSION=$EKKO_VERSION "$VENV/bin/pip" install -q --no-deps --no-build-isolation --force-reinstall "$W/src" >"$W/pip.log" 2>&1 ||
  { cat "$W/pip.log" >&2; die "pip install python-ekkoclient failed"; }

echo "== unit tests"
if (cd "$ROOT/python-ekkoclient" && "$VENV/bin/python" -B -m unittest -q 2>"$W/unit.log"); then
  pass "python-ekkoclient unit tests ($(grep -o 'Ran [0-9]* tests' "$W/unit.log"))"
else
  cat "$W/unit.log"
  fail "python-ekkoclient unit tests"
fi
check "pip show python-ekkoclient: version $EKKO_VERSION (pbr, PBR_VERSION)" \
  [ "$("$VENV/bin/pip" show python-ekkoclient 2>/dev/null | awk '$1 == "Version:" {print $2}')" = "$EKKO_VERSION" ]
check "the openstack.ekko.v1 entry points are registered (29 commands)" \
  [ "$("$VENV/bin/python" -c "from importlib.metadata import entry_points as e; print(len(e(group='openstack.ekko.v1')))")" -eq 29 ]
run backup-list-help admin ekko backup list --help
check "openstack ekko backup list --help works" has backup-list-help "--all-projects"
run plugin-help admin help ekko
check "openstack help ekko: the plugin is loaded" succeeded plugin-help
for c in "backup create" "backup restore" "restore create" "restore cancel" "instance timeline" "policy add instance" "quota set" "export create" "export delete"; do
  check "openstack help ekko lists 'ekko $c'" has plugin-help "ekko $c"
done

# ---------------------------------------------------------------- stack
# Restoring to a file is an operator action by default (ekko:restore:create
# is rule:context_is_admin, etc/ekko/policy.yaml.sample). This test wants
# the demo *member* to restore, so the stack runs with an operator override
# granting it to project members, as a cloud that lets tenants restore into
# a host directory would. Showing and listing restores is already allowed to
# project readers by default, and restoring into a Glance image
# (ekko:restore:create_image) to project members, so nothing else is
# overridden: the image restores below run on that default. The file lives
# in this script's own directory: stack_start creates STACK_DIR and starts
# ekko in one go (the policy file is read once, at start), so it cannot be
# written into STACK_DIR beforehand; `policy_file` takes an absolute path.
cat >"$W/policy.yaml" <<'YAML'
# tools/osc-test.sh: project members may restore backups to files.
"ekko:restore:create": "rule:context_is_admin or rule:project_member"
YAML
log "starting the stack"
stack_start "[oslo_policy]" "policy_file = $W/policy.yaml"

# ------------------------------------------------------ Keystone catalog
# As devstack's get_or_create_service / get_or_create_endpoint would, but
# re-pointing the endpoint to this run's stack: the service `ekko` of type
# instance-backup (`backup` is freezer's) is created if absent; its stale
# endpoints in RegionOne are deleted, then the public one is created.
echo "== Keystone catalog"
SERVICE_ID=$(admin service list -f value -c ID -c Name -c Type |
  awk '$2 == "ekko" && $3 == "instance-backup" && !found {print $1; found = 1}')
if [ -z "$SERVICE_ID" ]; then
  SERVICE_ID=$(admin service create --name ekko \
    --description "Ekko block-based instance backup" instance-backup -f value -c id)
fi
for ep in $(admin endpoint list --service "$SERVICE_ID" --region RegionOne -f value -c ID); do
  admin endpoint delete "$ep"
done
ENDPOINT_ID=$(admin endpoint create --region RegionOne "$SERVICE_ID" public "$STACK_URL" -f value -c id)
run catalog admin endpoint list --service instance-backup -f json
check "the catalog has exactly one instance-backup endpoint, public, at $STACK_URL" \
  jtrue catalog "[(e['Interface'], e['URL']) for e in d] == [('public', '$STACK_URL')]"

INST=$STACK_INSTANCE
DEMO_PID=$EKKO_DEMO_PROJECT_ID

# ------------------------------------------------------------ demo member
echo "== demo member"
run inst-list demo ekko instance list -f json
check "instance list shows the instance" jtrue inst-list "[i['ID'] for i in d] == ['$INST']"
check "instance list: its disk disk0 of 64 MiB, on stack-host" \
  jtrue inst-list "d[0]['Host'] == 'stack-host' and [(x['device'], x['size']) for x in d[0]['Disks']] == [('disk0', 64 << 20)]"

must b1 demo ekko backup create "$INST" --name osc-first --description "from the CLI" \
  --property origin=osc-test --wait --wait-interval 0.5 --wait-timeout 300 -f json
B1=$(js b1 "d['id']")
check "backup create --wait ends available at 100%" jtrue b1 "d['status'] == 'available' and d['progress'] == 100"
check "the first backup is full, of the instance, in demo's project" \
  jtrue b1 "d['kind'] == 'full' and d['instance_id'] == '$INST' and d['project_id'] == '$DEMO_PID'"
check "backup create --wait drew a progress bar on stderr" has b1 "\[#+\] 100% available" err
check "backup create kept name, description and metadata" \
  jtrue b1 "d['name'] == 'osc-first' and d['description'] == 'from the CLI' and d['metadata'] == {'origin': 'osc-test'}"

run list1 demo ekko backup list -f json
check "backup list has the backup, available" \
  jtrue list1 "[(b['ID'], b['Name'], b['Status'], b['Instance ID']) for b in d] == [('$B1', 'osc-first', 'available', '$INST')]"
run list-inst demo ekko backup list --instance "$INST" --status available --sort created_at:asc --limit 5 -f json
check "backup list --instance --status --sort --limit" jtrue list-inst "[b['ID'] for b in d] == ['$B1']"
run list-none demo ekko backup list --status error -f json
check "backup list --status error is empty" jtrue list-none "d == []"

run show1 demo ekko backup show osc-first -f json
check "backup show by name finds it" jtrue show1 "d['id'] == '$B1'"
check "backup show: sizes (64 MiB disk, 9 MiB read; new and stored bytes)" \
  jtrue show1 "d['size'] == 64 << 20 and d['read_bytes'] == 9 << 20 and 0 < d['new_bytes'] <= d['read_bytes'] and 0 < d['stored_bytes']"
check "backup show: consistency, ratios, times, no error" \
  jtrue show1 "d['consistency'] == 'crash' and d['dedup_ratio'] >= 1 and d['compression_ratio'] >= 1 and d['completed_at'] and d['error'] is None and 'links' not in d"

run cancel-done demo ekko backup cancel "$B1"
check "backup cancel of a finished backup fails with 409 Conflict" fails_with cancel-done "HTTP 409"

must r1 demo ekko backup restore "$B1" --target osc-restored.raw --wait --wait-interval 0.5 --wait-timeout 300 -f json
R1=$(js r1 "d['id']")
check "backup restore --wait completes" \
  jtrue r1 "d['status'] == 'completed' and d['backup_id'] == '$B1' and d['format'] == 'raw' and d['bytes_written'] > 0"
check "the restore's target is the file on the instance's host" \
  jtrue r1 "d['target']['path'] == 'osc-restored.raw' and d['target']['host'] == 'stack-host' and d['target']['device'] == 'disk0'"
# -U: qemu-storage-daemon holds the disk's write lock.
# shellcheck disable=SC2153  # STACK_DISK is set by stack_start
check "the restored file is bit-exact with the instance disk (qemu-img compare)" \
  qemu-img compare -U -q -f raw -F qcow2 "$STACK_RESTORE_DIR/osc-restored.raw" "$STACK_DISK"
run rshow demo ekko restore show "$R1" -f json
check "restore show" jtrue rshow "d['id'] == '$R1' and d['status'] == 'completed'"
run rlist demo ekko restore list -f json
check "restore list has it" jtrue rlist "[(r['ID'], r['Status']) for r in d] == [('$R1', 'completed')]"
run rcancel-member demo ekko restore cancel "$R1"
check "restore cancel is an operator action (403 for a member by default)" fails_with rcancel-member "HTTP 403"
run rcancel-done admin ekko restore cancel "$R1"
check "restore cancel of a completed restore fails with 409 Conflict" fails_with rcancel-done "HTTP 409"
run r-again demo ekko backup restore "$B1" --target osc-restored.raw --wait --wait-interval 0.5 --wait-timeout 300
check "restore --wait onto an existing file fails with the reason (never overwritten)" \
  fails_with r-again "failed: .*exists.*never overwrites"

# ---------------------------------------------------------------- exports
# Serving a backup over NBD is an operator action by default: the admin
# exports the demo member's B1 (the export belongs to B1's project), reads
# it with qemu-img, then ends it.
echo "== exports (admin)"
run x-member demo ekko export create "$B1" --wait --wait-interval 0.5 --wait-timeout 60
check "demo: export create is an operator action (403 for a member by default, exit 1)" \
  exits_with x-member 1 "HTTP 403"
run x-long admin ekko export create "$B1" --lifetime 999999
check "export create --lifetime beyond [export] max_lifetime fails with 400 and the bounds" \
  exits_with x-long 1 "HTTP 400.*lifetime must be 1 to 86400 seconds"

must x1 admin ekko export create "$B1" --lifetime 600 --wait --wait-interval 0.5 --wait-timeout 120 -f json
X1=$(js x1 "d['id']")
XURL=$(js x1 "d['url']")
check "export create --wait: active, B1's only disk, on the instance's host, in demo's project" \
  jtrue x1 "d['status'] == 'active' and d['backup_id'] == '$B1' and d['disk'] == 'disk0' and d['host'] == 'stack-host' and d['project_id'] == '$DEMO_PID' and d['error'] is None"
check "export create: an nbd:// URL with a secret export name, no TLS, the lifetime asked" \
  jtrue x1 "d['url'].startswith('nbd://') and len(d['url'].rsplit('/', 1)[1]) == 64 and '$X1' not in d['url'] and d['tls'] is False and d['lifetime'] == 600 and d['expires_at']"
check "export create --wait drew a progress bar on stderr" has x1 "\[#+\] 100% active" err
# As the file restore's compare above: the backup (here raw over NBD)
# first, the instance disk second; -U: qemu-storage-daemon holds the
# disk's write lock.
check "the export reads bit-exact as the instance disk (qemu-img compare over NBD)" \
  qemu-img compare -U -q -f raw -F qcow2 "$XURL" "$STACK_DISK"

run xshow admin ekko export show "$X1" -f json
check "export show: active, the same URL, no links" \
  jtrue xshow "d['id'] == '$X1' and d['status'] == 'active' and d['url'] == '$XURL' and 'links' not in d"
run xshow-url admin ekko export show "$X1" -c url -f value
check "export show -c url -f value prints the URL alone" \
  [ "$(cat "$W/xshow-url.out")" = "$XURL" ]
run xlist admin ekko export list --all-projects --backup "$B1" -f json
check "export list --all-projects --backup: the export, with its project, disk, host and URL" \
  jtrue xlist "[(x['ID'], x['Backup ID'], x['Project ID'], x['Disk'], x['Host'], x['Status'], x['URL']) for x in d] == [('$X1', '$B1', '$DEMO_PID', 'disk0', 'stack-host', 'active', '$XURL')] and d[0]['Expires At']"
run xlist-own admin ekko export list --backup "$B1" -f json
check "admin: export list without --all-projects is the admin project's only" \
  jtrue xlist-own "d == []"

run xdel admin ekko export delete "$X1"
check "export delete" succeeded xdel
run xending admin ekko export show "$X1" -f json
check "export delete: the export is ending (or already ended)" \
  jtrue xending "d['status'] in ('ending', 'ended')"
for _ in $(seq 1 60); do
  run xend admin ekko export show "$X1" -f json
  if jtrue xend "d['status'] == 'ended'"; then break; fi
  sleep 0.5
done
check "export delete: the export ends (status ended) within 30 s" \
  jtrue xend "d['status'] == 'ended'"
# not_served URL: nothing serves an NBD export at URL any more.
not_served() { ! timeout 20 qemu-img info -f raw "$1" >/dev/null 2>&1; }
check "the ended export is no longer served (qemu-img info of its URL fails)" \
  not_served "$XURL"
# Each export is tried; a failure is reported by id and makes the exit 1.
# Deleting an export that has ended already changes nothing (202).
run xdel-bad admin ekko export delete "$X1" no-such-export
check "export delete <ended> <missing>: exit 1, '1 of 2 exports failed to delete'" \
  exits_with xdel-bad 1 "1 of 2 exports failed to delete"
check "export delete reports the missing export by id with the API's 404" \
  has xdel-bad "Failed to delete export no-such-export: .*HTTP 404" err
run xend2 admin ekko export show "$X1" -f json
check "the ended export stays ended" jtrue xend2 "d['status'] == 'ended'"

# Restore into a Glance image, as the member (ekko:restore:create_image
# allows project members by default), then the image through Glance with
# the same CLI. Nova and Cinder do not run here: the image is checked for
# what `server create --image` / `server rebuild --image` / `volume create
# --image` need (format, container, min_disk, virtual size, properties).
# The disk has not changed since B1, so it is "the disk at backup time".
GLANCE_ON=0
if [ -z "${EKKO_GLANCE_URL:-}" ]; then
  log "SKIPPED: restore into a Glance image (EKKO_GLANCE_URL is empty: the test environment runs without Glance)"
else
  GLANCE_ON=1
  DISK_SIZE=$((64 << 20))
  IMAGE_NAMES+=("osc-img-$$" "osc-imgq-$$" "osc-stolen-$$")
  must rimg demo ekko restore create "$B1" --image "osc-img-$$" --wait --wait-interval 0.5 --wait-timeout 300 -f json
  IMG=$(js rimg "d['image_id']")
  IMAGES+=("$IMG")
  check "restore create --image --wait: completed, the image's id in its target" \
    jtrue rimg "d['status'] == 'completed' and d['backup_id'] == '$B1' and d['target']['type'] == 'image' and d['target']['image_id'] == '$IMG' and d['target']['name'] == 'osc-img-$$'"
  # bytes_written counts the data, as for the file restore (zeros are
  # holes there; here they still go to Glance: the image's size is checked).
  check "restore create --image: raw, private, disk0, the file restore's bytes written" \
    jtrue rimg "d['target']['disk_format'] == 'raw' and d['target']['visibility'] == 'private' and d['target']['device'] == 'disk0' and d['progress'] == 100 and d['bytes_written'] == $(js r1 "d['bytes_written']") and d['error'] is None"
  check "restore create --image --wait drew a progress bar on stderr" has rimg "\[#+\] 100% completed" err
  run rimg-list demo ekko restore list --backup "$B1" -f json
  check "restore list shows the image restore with its image id" \
    jtrue rimg-list "[(r['Image ID'], r['Target']) for r in d if r['Image ID']] == [('$IMG', 'image:osc-img-$$')]"

  run img-show demo image show "$IMG" -f json
  check "image show: owned by demo's project, private, active" \
    jtrue img-show "d['owner'] == '$DEMO_PID' and d['visibility'] == 'private' and d['status'] == 'active' and d['name'] == 'osc-img-$$'"
  check "image show: bootable as is (raw, bare, min_disk 1 GiB, 64 MiB virtual and stored)" \
    jtrue img-show "d['disk_format'] == 'raw' and d['container_format'] == 'bare' and d['min_disk'] == 1 and d['virtual_size'] == $DISK_SIZE and d['size'] == $DISK_SIZE"
  # disk0 names no bus (vdX would be virtio, sdX scsi, hdX ide): no
  # hw_disk_bus, so Nova takes its default rather than a wrong guess.
  check "image show: ekko_backup_id, ekko_instance_id, ekko_disk; no hw_disk_bus for 'disk0'" \
    jtrue img-show "d['properties'].get('ekko_backup_id') == '$B1' and d['properties'].get('ekko_instance_id') == '$INST' and d['properties'].get('ekko_disk') == 'disk0' and 'hw_disk_bus' not in d['properties']"
  run img-save demo image save --file "$W/img.raw" "$IMG"
  check "image save succeeds" succeeded img-save
  check "image save: bit-exact with the disk restored to a file from the same backup (cmp)" \
    cmp "$W/img.raw" "$STACK_RESTORE_DIR/osc-restored.raw"
  check "image save: bit-exact with the instance disk (qemu-img compare)" \
    qemu-img compare -U -q -f raw -F qcow2 "$W/img.raw" "$STACK_DISK"

  must rimgq demo ekko restore create "$B1" --image "osc-imgq-$$" --disk-format qcow2 \
    --wait --wait-interval 0.5 --wait-timeout 300 -f json
  IMGQ=$(js rimgq "d['image_id']")
  IMAGES+=("$IMGQ")
  check "restore create --image --disk-format qcow2 --wait: completed" \
    jtrue rimgq "d['status'] == 'completed' and d['target']['image_id'] == '$IMGQ' and d['target']['disk_format'] == 'qcow2' and d['format'] == 'qcow2'"
  run imgq-show demo image show "$IMGQ" -f json
  check "qcow2 image show: demo's, private, active, qcow2, bare, min_disk 1, 64 MiB virtual" \
    jtrue imgq-show "d['owner'] == '$DEMO_PID' and d['visibility'] == 'private' and d['status'] == 'active' and d['disk_format'] == 'qcow2' and d['container_format'] == 'bare' and d['min_disk'] == 1 and d['virtual_size'] == $DISK_SIZE and 0 < d['size'] < $DISK_SIZE and d['properties'].get('ekko_backup_id') == '$B1'"
  run imgq-save demo image save --file "$W/img.qcow2" "$IMGQ"
  check "qcow2 image save succeeds" succeeded imgq-save
  check "qcow2 image save: a valid qcow2 (qemu-img check)" qemu-img check -q -f qcow2 "$W/img.qcow2"
  check "qcow2 image save: same content as the instance disk (qemu-img compare)" \
    qemu-img compare -U -q -f qcow2 -F qcow2 "$W/img.qcow2" "$STACK_DISK"

  run rimg-reader reader ekko restore create "$B1" --image "osc-stolen-$$" --wait --wait-interval 0.5 --wait-timeout 60
  check "reader: restore create --image is refused (403, exit 1)" \
    exits_with rimg-reader 1 "HTTP 403"
  run img-list demo image list --private -f json
  check "demo: image list has the two images, nothing from refused attempts" \
    jtrue img-list "sorted(i['ID'] for i in d if i['Name'].endswith('-$$')) == sorted(['$IMG', '$IMGQ'])"
fi

run tl1 demo ekko instance timeline "$INST" --width 30
check "instance timeline succeeds" succeeded tl1
check "instance timeline: a header and one row" lines tl1 2
check "instance timeline: the header names the scale" line tl1 1 "█ new  ░ unchanged or empty \(of 64\.0 MiB\)$"
check "instance timeline: the row is the full backup, 30 cells of bar" \
  line tl1 2 "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}Z full +[0-9.]+ [KM]iB +[0-9.]+ [KM]?i?B  █+░+$"
check "instance timeline: --width 30 draws 30 cells" \
  [ "$(sed -n 2p "$W/tl1.out" | grep -o '[█░]' | wc -l)" -eq 30 ]

must b2 demo ekko backup create "$INST" --name osc-second --wait --wait-interval 0.5 --wait-timeout 300 -f json
B2=$(js b2 "d['id']")
check "the second backup is incremental and available" jtrue b2 "d['kind'] == 'incremental' and d['status'] == 'available'"
check "the incremental reads less than the full" \
  [ "$(js b2 "d['read_bytes']")" -lt "$(js b1 "d['read_bytes']")" ]
run list2 demo ekko backup list -f json
check "backup list: newest first" jtrue list2 "[b['ID'] for b in d] == ['$B2', '$B1']"
run page demo ekko backup list --limit 1 --marker "$B2" -f json
check "backup list --limit 1 --marker <newest> is the older one" jtrue page "[b['ID'] for b in d] == ['$B1']"
run tl2 demo ekko instance timeline "$INST"
check "instance timeline: two rows now" lines tl2 3
check "instance timeline: oldest first (full, then incremental)" line tl2 2 "Z full "
check "instance timeline: the incremental, 40 cells by default" \
  line tl2 3 "Z incremental .*  [█░]{40}$"
run ishow demo ekko instance show "$INST" -f json
check "instance show: last backup is the incremental" \
  jtrue ishow "d['last_backup']['id'] == '$B2' and d['last_backup']['kind'] == 'incremental'"

# backup set, and protection against delete.
run bset demo ekko backup set osc-second --name osc-kept --description "keep me" --protected
run bshow2 demo ekko backup show "$B2" -f json
check "backup set --name --description --protected" \
  jtrue bshow2 "d['name'] == 'osc-kept' and d['description'] == 'keep me' and d['protected'] is True"
run del-prot demo ekko backup delete osc-kept
check "deleting a protected backup fails with 409 Conflict" fails_with del-prot "HTTP 409"
run bunprot demo ekko backup set osc-kept --unprotected
check "backup set --unprotected" succeeded bunprot
run bprop demo ekko backup set osc-kept --property audit=2026 --property owner=ops
run bshow3 demo ekko backup show "$B2" -f json
check "backup set --property adds metadata" \
  jtrue bshow3 "d['metadata'] == {'audit': '2026', 'owner': 'ops'}"
run bunset demo ekko backup unset osc-kept --property owner
run bshow4 demo ekko backup show "$B2" -f json
check "backup unset --property removes that key only" jtrue bshow4 "d['metadata'] == {'audit': '2026'}"
run bnoprop demo ekko backup set osc-kept --no-property
run bshow5 demo ekko backup show "$B2" -f json
check "backup set --no-property clears the metadata" jtrue bshow5 "d['metadata'] == {}"
run bprop-bad demo ekko backup set osc-kept --property novalue
check "backup set --property without '=' fails with the reason (osc-lib's KeyValueAction)" fails_with bprop-bad "key=value.*novalue"

# Policies.
must pcreate demo ekko policy create osc-nightly --schedule "0 2 * * *" --timezone UTC \
  --keep-last 3 --description "CLI test" -f json
P=$(js pcreate "d['id']")
check "policy create" \
  jtrue pcreate "d['name'] == 'osc-nightly' and d['schedule'] == '0 2 * * *' and d['timezone'] == 'UTC' and d['enabled'] is True and d['retention']['keep_last'] == 3 and d['instances'] == []"
run pset demo ekko policy set osc-nightly --keep-daily 7 --min-age 3600 --disable --description changed
run pshow demo ekko policy show "$P" -f json
check "policy set (retention, enabled, description)" \
  jtrue pshow "d['retention']['keep_daily'] == 7 and d['retention']['keep_last'] == 3 and d['retention']['min_age_seconds'] == 3600 and d['enabled'] is False and d['description'] == 'changed'"
run padd demo ekko policy add instance osc-nightly "$INST"
run pshow2 demo ekko policy show osc-nightly -f json
check "policy add instance" jtrue pshow2 "d['instances'] == ['$INST']"
run iprot demo ekko instance show "$INST" -f json
check "the instance is now protected by the policy" jtrue iprot "d['policy_id'] == '$P' and d['protected'] is True"
run pret demo ekko policy retention osc-nightly -f json
check "policy retention (dry run): both backups kept, with reasons" \
  jtrue pret "sorted((r['Backup ID'], r['Verdict']) for r in d) == sorted([('$B1', 'keep'), ('$B2', 'keep')]) and all(r['Reasons'] for r in d)"
run plist demo ekko policy list -f json
check "policy list" jtrue plist "[(p['ID'], p['Enabled'], p['Instances']) for p in d] == [('$P', False, ['$INST'])]"
run prem demo ekko policy remove instance osc-nightly "$INST"
run pshow3 demo ekko policy show osc-nightly -f json
check "policy remove instance" jtrue pshow3 "d['instances'] == []"
run pdel demo ekko policy delete osc-nightly
run plist2 demo ekko policy list -f json
check "policy delete" jtrue plist2 "d == []"
run pgone demo ekko policy show "$P"
check "policy show of the deleted policy fails with 404" fails_with pgone "HTTP 404"

# --------------------------------------------------------------- alt member
echo "== alt member (another project)"
run alt-list alt ekko backup list -f json
check "alt: backup list does not contain demo's backups" \
  jtrue alt-list "not {'$B1', '$B2'} & {b['ID'] for b in d}"
run alt-show alt ekko backup show "$B1"
check "alt: backup show <demo's backup> fails with 404" fails_with alt-show "HTTP 404"
run alt-inst alt ekko instance list -f json
check "alt: instance list does not show demo's instance" jtrue alt-inst "'$INST' not in [i['ID'] for i in d]"
run alt-del alt ekko backup delete "$B1"
check "alt: backup delete <demo's backup> fails" fails_with alt-del "HTTP 404"
if [ "$GLANCE_ON" = 1 ]; then
  run alt-rimg alt ekko restore create "$B1" --image "osc-stolen-$$" --wait --wait-interval 0.5 --wait-timeout 60 -f json
  check "alt: restore create --image <demo's backup> fails (404, exit 1)" \
    exits_with alt-rimg 1 "HTTP 404"
  # The API itself, not only the plugin's lookup: the backup is named in the
  # body, so one the caller cannot see is a bad request, as a missing one.
  ALT_TOKEN=$(stack_token "$EKKO_ALT_USERNAME" "$EKKO_ALT_PASSWORD" "$EKKO_ALT_PROJECT")
  ALT_CODE=$(curl -s -o "$W/alt-post.out" -w '%{http_code}' -H "X-Auth-Token: $ALT_TOKEN" \
    -H 'Content-Type: application/json' -d "{\"restore\": {\"backup_id\": \"$B1\", \"target\": {\"type\": \"image\", \"name\": \"osc-stolen-$$\"}}}" \
    "$STACK_URL/v1/restores")
  check "alt: POST /v1/restores (image) of demo's backup: 400, as for a backup that does not exist" \
    [ "$ALT_CODE" = 400 ]
  run alt-img alt image show "$IMG"
  check "alt: image show <demo's image> fails (exit 1)" \
    exits_with alt-img 1 "No Image found|[Nn]ot [Ff]ound"
  run alt-imgs alt image list -f json
  check "alt: image list shows neither of demo's images nor a stolen one" \
    jtrue alt-imgs "not {'$IMG', '$IMGQ'} & {i['ID'] for i in d} and not [i for i in d if i['Name'] == 'osc-stolen-$$']"
  run alt-save alt image save --file "$W/alt.raw" "$IMG"
  check "alt: image save <demo's image> fails" failed alt-save
fi

# -------------------------------------------------------------------- admin
echo "== admin"
run q1 admin ekko quota show "$EKKO_DEMO_PROJECT" -f json
check "admin: quota show <demo project name>: its id and usage" \
  jtrue q1 "d['project_id'] == '$DEMO_PID' and d['backups_in_use'] == 2 and d['backups'] >= 2"
run qset admin ekko quota set "$DEMO_PID" --backups 7 --backup-gigabytes 11 -f json
check "admin: quota set" jtrue qset "d['backups'] == 7 and d['backup_gigabytes'] == 11"
run q2 demo ekko quota show -f json
check "demo: quota show (own project) sees the new limits" \
  jtrue q2 "d['project_id'] == '$DEMO_PID' and d['backups'] == 7 and d['backup_gigabytes'] == 11"
run qdemo demo ekko quota set "$DEMO_PID" --backups 1000
check "demo: quota set is refused (403)" fails_with qdemo "HTTP 403"
run all admin ekko backup list --all-projects -f json
check "admin: backup list --all-projects sees demo's backups" \
  jtrue all "{('$B1', '$DEMO_PID'), ('$B2', '$DEMO_PID')} <= {(b['ID'], b['Project ID']) for b in d}"
run own admin ekko backup list -f json
check "admin: backup list without --all-projects is the admin project's only" \
  jtrue own "not {'$B1', '$B2'} & {b['ID'] for b in d}"

# ------------------------------------------------------------- demo delete
echo "== demo member: delete"
run bdel demo ekko backup delete "$B1" osc-kept
check "backup delete of both backups" succeeded bdel
run list3 demo ekko backup list --status available -f json
check "no available backups left" jtrue list3 "d == []"
if [ "$GLANCE_ON" = 1 ]; then
  # The images outlive their backup (they are the tenant's now).
  run img-after demo image show "$IMG" -f json
  check "the image outlives its deleted backup (still active)" jtrue img-after "d['status'] == 'active'"
  run img-del demo image delete "$IMG" "$IMGQ"
  check "demo: image delete of both images" succeeded img-del
  run img-gone demo image show "$IMG"
  check "the image is gone" exits_with img-gone 1 "No Image found|[Nn]ot [Ff]ound"
  IMAGES=()
fi

summary
[ "${#FAILED[@]}" -eq 0 ]
