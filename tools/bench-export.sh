#!/usr/bin/env bash
# Export benchmark (issue 20). One disk of SIZE MiB (random data in the
# first MiB of every 2 MiB, the rest zero) on a qemu-storage-daemon, backed
# up with the embedded default (SQLite, local store); then
#   - `ekko restore` of the disk to a file vs a sequential copy of the
#     export to a file with nbdcopy (cold cache): throughput ratio (the
#     target is >= 0.8);
#   - time to first byte of a cold export: `ekko export` started until a
#     4 KiB read at 0 is answered (includes Python's start, ~20 ms);
#   - 4 KiB random reads, one at a time, with a warm cache: p50/p99
#     (tools/lib/nbd_latency.py, a minimal NBD client);
#   - peak RSS of the export process (VmHWM).
#
#   tools/bench-export.sh [size_mib]    (EKKO_BIN=... to use a built ekko)
#
# EKKO_BENCH_STORE=swift stores in the test environment's Swift instead of
# a local directory (source /var/lib/ekko-openstack/env.sh first): object
# round trips, where merged ranged GETs count.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "${BASH_SOURCE[0]}")/.."

size_mib=${1:-1024}
cache=256M
if [[ -z ${EKKO_BIN:-} ]]; then
    cargo build --release --quiet --bin ekko
    EKKO_BIN=target/release/ekko
fi
for t in qemu-img qemu-storage-daemon nbdcopy python3; do
    command -v "$t" >/dev/null || { echo "$t is missing: tools/install-deps.sh installs it" >&2; exit 1; }
done

work=$(mktemp -d /tmp/ekko-bench-export.XXXXXX)
qsd_pid=
exp_pid=
cleanup() {
    [[ -n $exp_pid ]] && kill "$exp_pid" 2>/dev/null && wait "$exp_pid" 2>/dev/null
    [[ -n $qsd_pid ]] && kill "$qsd_pid" 2>/dev/null && wait "$qsd_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

# shellcheck source=tools/lib/bench-disk.sh
. tools/lib/bench-disk.sh
bench_disk "$work" "$size_mib"

printf '[DEFAULT]\nstate_path = %s/state\n' "$work" >"$work/ekko.conf"
if [[ ${EKKO_BENCH_STORE:-local} == swift ]]; then
    printf '[storage]\nbackend = swift\n[swift]\ncontainer_prefix = ekko-bench-%s-\n[keystone_authtoken]\nauth_url = %s\nusername = %s\npassword = %s\nproject_name = %s\nregion_name = RegionOne\ninterface = internal\n' \
        "$$" "$EKKO_KEYSTONE_AUTH_URL" "$EKKO_SERVICE_USERNAME" "$EKKO_SERVICE_PASSWORD" "$EKKO_SERVICE_PROJECT" >>"$work/ekko.conf"
fi
ekko() { "$EKKO_BIN" --config-file "$work/ekko.conf" "$@"; }
ekko init >/dev/null 2>&1
id=$(ekko backup --qmp-socket "$work/qmp.sock" --instance bench --project bench 2>/dev/null \
    | awk '{ print $2; exit }')
kill "$qsd_pid"; wait "$qsd_pid" 2>/dev/null || true; qsd_pid=
rm -f "$work/disk.qcow2"

# Each timed run starts with no dirty pages (the backup's writeback would
# land on whichever runs first) and the store's objects read once: restores
# and copies alternate, RUNS of each, medians compared.
runs=${EKKO_BENCH_RUNS:-3}
(( runs >= 1 )) || { echo "EKKO_BENCH_RUNS must be at least 1" >&2; exit 1; }
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
timed_restore() {
    sync
    local t0
    t0=$(now)
    ekko restore "$id" --output "$work/restored.raw" >/dev/null 2>&1 \
        || { echo "ekko restore failed" >&2; return 1; }
    secs "$t0" "$(now)"
    rm -f "$work/restored.raw"
}
timed_restore >/dev/null

sock=$work/export.sock
t0=$(now)
"$EKKO_BIN" --config-file "$work/ekko.conf" export "$id" --socket "$sock" --cache "$cache" \
    >"$work/export.log" 2>&1 &
exp_pid=$!
python3 tools/lib/nbd_latency.py --first "$sock"
ttfb_ms=$(awk -v s="$(secs "$t0" "$(now)")" 'BEGIN { printf "%.0f", s * 1000 }')

nbdcopy "nbd+unix:///?socket=$sock" "$work/copy.raw"
cmp -s "$work/disk.raw" "$work/copy.raw" || { echo "the export's copy differs from the disk" >&2; exit 1; }
rm -f "$work/copy.raw"
kill -TERM "$exp_pid"; wait "$exp_pid" || true; exp_pid=

# A cold export (started anew, empty cache) per copy, alternating with
# restores.
restores=() copies=()
for _ in $(seq "$runs"); do
    t=$(timed_restore)
    restores+=("$t")
    rm -f "$sock"
    "$EKKO_BIN" --config-file "$work/ekko.conf" export "$id" --socket "$sock" --cache "$cache" \
        >>"$work/export.log" 2>&1 &
    exp_pid=$!
    for _ in $(seq 200); do [[ -S $sock ]] && break; sleep 0.05; done
    [[ -S $sock ]] || { echo "the export did not start:" >&2; cat "$work/export.log" >&2; exit 1; }
    sync
    t0=$(now)
    nbdcopy "nbd+unix:///?socket=$sock" "$work/copy.raw"
    copies+=("$(secs "$t0" "$(now)")")
    rm -f "$work/copy.raw"
    if [[ ${#copies[@]} -lt $runs ]]; then
        kill -TERM "$exp_pid"; wait "$exp_pid" || true; exp_pid=
    fi
done
t_restore=$(printf '%s\n' "${restores[@]}" | median)
t_copy=$(printf '%s\n' "${copies[@]}" | median)

span=$(( (size_mib < 128 ? size_mib : 128) << 20 ))
read -r p50 p99 < <(python3 tools/lib/nbd_latency.py "$sock" "$span" 2000)
rss_kib=$(awk '/VmHWM/ { print $2 }' "/proc/$exp_pid/status")
kill -TERM "$exp_pid"; wait "$exp_pid" || true; exp_pid=
[[ ! -e $sock ]] || { echo "the export's socket was left behind" >&2; exit 1; }

awk -v store="${EKKO_BENCH_STORE:-local}" -v mib="$size_mib" -v r="$t_restore" -v c="$t_copy" -v ttfb="$ttfb_ms" \
    -v p50="$p50" -v p99="$p99" -v rss="$rss_kib" -v cache="$cache" -v runs="$runs" 'BEGIN {
    printf "disk: %d MiB, half data (1 MiB runs), half zero; store: %s\n", mib, store
    printf "ekko restore to a file (median of %d):   %6.2f s  %7.1f MiB/s\n", runs, r, mib / r
    printf "nbdcopy of a cold export (median of %d): %6.2f s  %7.1f MiB/s  (%.2fx restore)\n", runs, c, mib / c, r / c
    printf "cold export, time to first byte: %d ms\n", ttfb
    printf "4 KiB random reads, warm cache: p50 %d us, p99 %d us\n", p50, p99
    printf "export peak RSS: %.1f MiB (cache %s)\n", rss / 1024, cache
}'
