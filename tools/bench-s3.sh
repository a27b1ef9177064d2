#!/usr/bin/env bash
# S3 store benchmark (issue 22): the same full backup of one disk into the
# test environment's Swift (Ekko's Swift client) and into the same Swift
# through its s3api middleware (Ekko's S3 store), on loopback; prints each
# run's time and the S3/Swift ratio of the best runs (target <= 1.2x).
#
#   source /var/lib/ekko-openstack/env.sh
#   tools/bench-s3.sh [size_mib] [rounds]    (EKKO_BIN=... to use a built ekko)
#
# The disk (default 1024 MiB): random data in the first MiB of every 2 MiB,
# the rest zero, on a qemu-storage-daemon; each run is a full backup with a
# fresh catalog into fresh containers/buckets, deleted afterwards. Runs
# alternate Swift, S3, Swift, S3 … so that both see the same machine noise.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

size_mib=${1:-1024}
rounds=${2:-3}
for v in EKKO_KEYSTONE_AUTH_URL EKKO_SERVICE_PASSWORD EKKO_S3_ENDPOINT EKKO_S3_ACCESS_KEY EKKO_S3_SECRET_KEY; do
    [[ -n ${!v:-} ]] || { echo "$v is not set: source /var/lib/ekko-openstack/env.sh" >&2; exit 1; }
done
if [[ -z ${EKKO_BIN:-} ]]; then
    cargo build --release --quiet --bin ekko
    EKKO_BIN=${CARGO_TARGET_DIR:-target}/release/ekko
fi
for t in qemu-img qemu-storage-daemon swift python3; do
    command -v "$t" >/dev/null || { echo "$t is missing: tools/install-deps.sh installs it" >&2; exit 1; }
done

work=$(mktemp -d /tmp/ekko-bench-s3.XXXXXX)
qsd_pid=
cleanup() {
    [[ -n $qsd_pid ]] && kill "$qsd_pid" 2>/dev/null && wait "$qsd_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
# The service account's Swift client: buckets are containers of the same account.
sw() {
    swift --os-auth-url "$EKKO_KEYSTONE_AUTH_URL" --os-username "$EKKO_SERVICE_USERNAME" \
        --os-password "$EKKO_SERVICE_PASSWORD" --os-project-name "$EKKO_SERVICE_PROJECT" \
        --os-user-domain-name Default --os-project-domain-name Default "$@"
}

# shellcheck source=tools/lib/bench-disk.sh
. tools/lib/bench-disk.sh
bench_disk "$work" "$size_mib"
rm -f "$work/disk.raw"

# run STORE N: one full backup; prints its seconds.
run() {
    local store=$1 n=$2 dir=$work/$1-$2 prefix="ekko-bench-$$-$1-$2-"
    mkdir -p "$dir"
    {
        printf '[DEFAULT]\nstate_path = %s\n[swift]\ncontainer_prefix = %s\n' "$dir" "$prefix"
        printf '[keystone_authtoken]\nauth_url = %s\nusername = %s\npassword = %s\nproject_name = %s\nregion_name = RegionOne\ninterface = internal\n' \
            "$EKKO_KEYSTONE_AUTH_URL" "$EKKO_SERVICE_USERNAME" "$EKKO_SERVICE_PASSWORD" "$EKKO_SERVICE_PROJECT"
        if [[ $store == s3 ]]; then
            printf '[storage]\nbackend = s3\n[s3]\nendpoint = %s\nregion = %s\naccess_key = %s\nsecret_key = %s\n' \
                "$EKKO_S3_ENDPOINT" "${EKKO_S3_REGION:-us-east-1}" "$EKKO_S3_ACCESS_KEY" "$EKKO_S3_SECRET_KEY"
        else
            printf '[storage]\nbackend = swift\n'
        fi
    } >"$dir/ekko.conf"
    "$EKKO_BIN" --config-file "$dir/ekko.conf" init >/dev/null 2>&1
    local t0 t
    t0=$(now)
    "$EKKO_BIN" --config-file "$dir/ekko.conf" backup --qmp-socket "$work/qmp.sock" \
        --instance bench --project bench >"$dir/backup.log" 2>&1 \
        || { cat "$dir/backup.log" >&2; exit 1; }
    t=$(secs "$t0" "$(now)")
    sw delete "${prefix}bench" >/dev/null 2>&1 || true
    sw delete "${prefix}bench+segments" >/dev/null 2>&1 || true
    rm -rf "$dir"
    echo "$t"
}

swift_times=()
s3_times=()
for n in $(seq "$rounds"); do
    swift_times+=("$(run swift "$n")")
    s3_times+=("$(run s3 "$n")")
done
awk -v mib="$size_mib" -v sw="${swift_times[*]}" -v s3="${s3_times[*]}" 'BEGIN {
    n = split(sw, a, " "); split(s3, b, " ")
    bs = a[1]; b3 = b[1]
    for (i = 1; i <= n; i++) { if (a[i] < bs) bs = a[i]; if (b[i] < b3) b3 = b[i] }
    printf "disk: %d MiB, half random data (1 MiB runs), half zero; full backups, loopback\n", mib
    printf "backup to Swift: %s s (best %.2f s, %.1f MiB/s of data)\n", sw, bs, mib / 2 / bs
    printf "backup to S3:    %s s (best %.2f s, %.1f MiB/s of data)\n", s3, b3, mib / 2 / b3
    printf "S3 / Swift: %.2fx (best runs)\n", b3 / bs
}'
