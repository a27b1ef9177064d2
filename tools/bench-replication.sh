#!/usr/bin/env bash
# Replication benchmark (issue 22): a replication pass copying one full
# backup from the first store (the test environment's Swift) to the second
# (Swift's s3api in the ekko_replica account), against a plain copy of the
# same objects between the same two stores with rclone (`--transfers` =
# Ekko's `[replication] concurrency`), on loopback. Prints each run's time
# and the Ekko/rclone ratio of the best runs.
#
#   source /var/lib/ekko-openstack/env.sh
#   tools/bench-replication.sh [size_mib] [rounds]   (EKKO_BIN=DIR: built binaries;
#   EKKO_BENCH_CONCURRENCY: copies at once, both tools, default 4)
#
# Ekko reads every object back from the second store and compares its
# SHA-256 before the catalog counts it; rclone checks the MD5 the store
# answers. Runs alternate Ekko, rclone, Ekko … into emptied buckets, so that
# both see the same machine noise.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

size_mib=${1:-1024}
rounds=${2:-3}
concurrency=${EKKO_BENCH_CONCURRENCY:-4}
for v in EKKO_KEYSTONE_AUTH_URL EKKO_SERVICE_USERNAME EKKO_SERVICE_PASSWORD EKKO_SERVICE_PROJECT \
    EKKO_S3_ENDPOINT EKKO_S3_REPLICA_ACCESS_KEY EKKO_S3_REPLICA_SECRET_KEY; do
    [[ -n ${!v:-} ]] || { echo "$v is not set: source /var/lib/ekko-openstack/env.sh" >&2; exit 1; }
done
if [[ -z ${EKKO_BIN:-} ]]; then
    cargo build --release --quiet --bin ekko --bin ekko-manage
    EKKO_BIN=${CARGO_TARGET_DIR:-target}/release
fi
for t in qemu-img qemu-storage-daemon rclone python3; do
    command -v "$t" >/dev/null || { echo "$t is missing: tools/install-deps.sh installs it" >&2; exit 1; }
done

work=$(mktemp -d /tmp/ekko-bench-replication.XXXXXX)
prefix="ekko-benchrep-$$-"
bucket="${prefix}bench"
qsd_pid=
# rclone's two remotes: `first` (Swift, the ekko service user), `second`
# (S3, the replica account), from the environment.
export RCLONE_CONFIG_FIRST_TYPE=swift RCLONE_CONFIG_FIRST_AUTH=$EKKO_KEYSTONE_AUTH_URL \
    RCLONE_CONFIG_FIRST_AUTH_VERSION=3 RCLONE_CONFIG_FIRST_USER=$EKKO_SERVICE_USERNAME \
    RCLONE_CONFIG_FIRST_KEY=$EKKO_SERVICE_PASSWORD RCLONE_CONFIG_FIRST_TENANT=$EKKO_SERVICE_PROJECT \
    RCLONE_CONFIG_FIRST_DOMAIN=Default RCLONE_CONFIG_FIRST_TENANT_DOMAIN=Default \
    RCLONE_CONFIG_FIRST_REGION=RegionOne RCLONE_CONFIG_FIRST_ENDPOINT_TYPE=internal
export RCLONE_CONFIG_SECOND_TYPE=s3 RCLONE_CONFIG_SECOND_PROVIDER=Other \
    RCLONE_CONFIG_SECOND_ENDPOINT=$EKKO_S3_ENDPOINT RCLONE_CONFIG_SECOND_REGION=${EKKO_S3_REGION:-us-east-1} \
    RCLONE_CONFIG_SECOND_ACCESS_KEY_ID=$EKKO_S3_REPLICA_ACCESS_KEY \
    RCLONE_CONFIG_SECOND_SECRET_ACCESS_KEY=$EKKO_S3_REPLICA_SECRET_KEY
# Loopback only: a CA bundle set for the AWS SDKs (AWS_CA_BUNDLE) makes
# rclone's S3 client fail to start ("unsupported transport").
unset AWS_CA_BUNDLE
export RCLONE_CONFIG=/dev/null
cleanup() {
    [[ -n $qsd_pid ]] && kill "$qsd_pid" 2>/dev/null && wait "$qsd_pid" 2>/dev/null
    rclone purge "first:$bucket" >/dev/null 2>&1 || true
    rclone purge "second:$bucket" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

# shellcheck source=tools/lib/bench-disk.sh
. tools/lib/bench-disk.sh
bench_disk "$work" "$size_mib"
rm -f "$work/disk.raw"

# One deployment: Swift first, the replica account's S3 second. Each Ekko
# run names its second store anew, so the catalog believes nothing of the
# run before and copies everything.
conf() {
    printf '[DEFAULT]\nstate_path = %s\n[storage]\nbackend = swift\n[swift]\ncontainer_prefix = %s\n' \
        "$work/state" "$prefix"
    printf '[keystone_authtoken]\nauth_url = %s\nusername = %s\npassword = %s\nproject_name = %s\nregion_name = RegionOne\ninterface = internal\n' \
        "$EKKO_KEYSTONE_AUTH_URL" "$EKKO_SERVICE_USERNAME" "$EKKO_SERVICE_PASSWORD" "$EKKO_SERVICE_PROJECT"
    printf '[replication]\nbackend = s3\nname = run%s\nconcurrency = %s\n' "$1" "$concurrency"
    printf '[replica_s3]\nendpoint = %s\nregion = %s\naccess_key = %s\nsecret_key = %s\n' \
        "$EKKO_S3_ENDPOINT" "${EKKO_S3_REGION:-us-east-1}" "$EKKO_S3_REPLICA_ACCESS_KEY" "$EKKO_S3_REPLICA_SECRET_KEY"
}
conf 0 >"$work/ekko.conf"
"$EKKO_BIN/ekko" --config-file "$work/ekko.conf" init >/dev/null 2>&1
"$EKKO_BIN/ekko" --config-file "$work/ekko.conf" backup --qmp-socket "$work/qmp.sock" \
    --instance bench --project bench >"$work/backup.log" 2>&1 \
    || { cat "$work/backup.log" >&2; exit 1; }
read -r objects bytes < <(rclone size --json "first:$bucket" \
    | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["count"], d["bytes"])')

ekko_run() {
    conf "$1" >"$work/ekko.conf"
    local t0 t
    t0=$(now)
    "$EKKO_BIN/ekko-manage" --config-file "$work/ekko.conf" replication run >"$work/run.log" 2>&1 \
        || { cat "$work/run.log" >&2; exit 1; }
    t=$(secs "$t0" "$(now)")
    rclone purge "second:$bucket" >/dev/null 2>&1
    echo "$t"
}
rclone_run() {
    local t0 t
    t0=$(now)
    rclone copy --transfers "$concurrency" "first:$bucket" "second:$bucket" >"$work/rclone.log" 2>&1 \
        || { cat "$work/rclone.log" >&2; exit 1; }
    t=$(secs "$t0" "$(now)")
    rclone purge "second:$bucket" >/dev/null 2>&1
    echo "$t"
}

ekko_times=()
rclone_times=()
for n in $(seq "$rounds"); do
    ekko_times+=("$(ekko_run "$n")")
    rclone_times+=("$(rclone_run)")
done
awk -v mib="$size_mib" -v objs="$objects" -v bytes="$bytes" -v e="${ekko_times[*]}" \
    -v r="${rclone_times[*]}" -v c="$concurrency" 'BEGIN {
    n = split(e, a, " "); split(r, b, " ")
    be = a[1]; br = b[1]
    for (i = 1; i <= n; i++) { if (a[i] < be) be = a[i]; if (b[i] < br) br = b[i] }
    mb = bytes / 1048576
    printf "disk: %d MiB, half random data; one full backup: %d objects, %.1f MiB in Swift\n", mib, objs, mb
    printf "copies to S3 (another account), %d at a time, loopback\n", c
    printf "ekko replication pass: %s s (best %.2f s, %.1f MiB/s)\n", e, be, mb / be
    printf "rclone copy:           %s s (best %.2f s, %.1f MiB/s)\n", r, br, mb / br
    printf "Ekko / rclone: %.2fx time (best runs)\n", be / br
}'
