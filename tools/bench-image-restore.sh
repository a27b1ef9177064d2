#!/usr/bin/env bash
# Restore into a Glance image vs restore to a file plus upload (issue 19).
#
# One disk (qcow2 served by qemu-storage-daemon, EKKO_BENCH_DATA_MIB MiB,
# default 1024; 60% random data in 1 MiB pieces spread over it, the rest
# zero) is backed up once (full) with `ekko backup` into a local store in
# the test environment's demo project. Then, EKKO_BENCH_ROUNDS rounds
# (default 3; the steps alternate within each; medians printed):
#   (a) ekko restore --output FILE                        (raw)
#   (b) openstack image create --file FILE                (the upload alone)
#   (c) ekko restore --image NAME                         (raw)
#   (d)-(f) the same with --format qcow2 / --disk-format qcow2
# and the table: seconds, MiB/s of the disk, peak RSS (/usr/bin/time), and
# the ratios c/a, c/(a+b), f/d, f/(d+e) (issue 19's target: restore to an
# image within 1.3x of restore to a file plus upload). Every image the
# script makes is deleted (also on failure or ^C). Timings are printed,
# never asserted. Store and Glance (file store) share this machine's disk
# and cores with Ekko; the store's segments are in the page cache.
#
#   tools/test-env.sh && tools/bench-image-restore.sh
#   (CARGO=xcargo to build through a wrapper; EKKO_BENCH_EKKO=/path/to/ekko
#   to use that binary instead of building; EKKO_BENCH_KEEP=1 keeps the
#   work directory under /var/tmp)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

data_mib=${EKKO_BENCH_DATA_MIB:-1024}
rounds=${EKKO_BENCH_ROUNDS:-3}
env_file=${EKKO_OS_STATE:-/var/lib/ekko-openstack}/env.sh
[[ -r $env_file ]] || { echo "no $env_file: run tools/test-env.sh first" >&2; exit 1; }
set -a
# shellcheck disable=SC1090
. "$env_file"
set +a
[[ -n ${EKKO_GLANCE_URL:-} ]] || { echo "the test environment has no Glance (EKKO_GLANCE_URL)" >&2; exit 1; }
for c in qemu-img qemu-storage-daemon python3 /usr/bin/time; do
    command -v "$c" >/dev/null || { echo "$c is missing (apt-get install time qemu-utils qemu-system-x86)" >&2; exit 1; }
done
openstack_bin=${EKKO_OPENSTACK:-/opt/ekko-venv/bin/openstack}
[[ -x $openstack_bin ]] || openstack_bin=$(command -v openstack) \
    || { echo "no openstack CLI (/opt/ekko-venv/bin/openstack)" >&2; exit 1; }

if [[ -n ${EKKO_BENCH_EKKO:-} ]]; then
    ekko=$EKKO_BENCH_EKKO
else
    ${CARGO:-cargo} build --release --quiet --bin ekko
    ekko=$PWD/target/release/ekko
fi

work=$(mktemp -d /var/tmp/ekko-bench-image.XXXXXX)
prefix=ekko-bench-image-restore-$$
qsd_pid=
token=
# The openstack CLI as the demo user, with the same project-scoped token
# Ekko gets (OS_TOKEN), so both pay the same authentication.
osc_cmd() {
    osc=(env -u OS_USERNAME -u OS_PASSWORD -u OS_PROJECT_NAME -u OS_USER_DOMAIN_NAME
        -u OS_PROJECT_DOMAIN_NAME OS_AUTH_TYPE=v3token OS_TOKEN="$token"
        OS_PROJECT_ID="$EKKO_DEMO_PROJECT_ID" "$openstack_bin")
}
osc() { osc_cmd; "${osc[@]}" "$@"; }
delete_images() {
    [[ -n $token ]] || return 0
    local ids
    ids=$(osc image list --limit 1000 -f value -c ID -c Name 2>/dev/null \
        | awk -v p="$prefix-" 'index($2, p) == 1 {print $1}') || true
    # shellcheck disable=SC2086
    [[ -z $ids ]] || osc image delete $ids >/dev/null 2>&1 || true
}
cleanup() {
    delete_images
    if [[ -n $qsd_pid ]]; then
        kill "$qsd_pid" 2>/dev/null || true
        wait "$qsd_pid" 2>/dev/null || true
    fi
    if [[ ${EKKO_BENCH_KEEP:-0} == 1 ]]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

token=$(env OS_USERNAME="$EKKO_DEMO_USERNAME" OS_PASSWORD="$EKKO_DEMO_PASSWORD" \
    OS_PROJECT_NAME="$EKKO_DEMO_PROJECT" "$openstack_bin" token issue -f value -c id)
export OS_TOKEN=$token
osc_cmd

# The disk: a sparse raw file with random 1 MiB pieces at 60% of the
# MiB offsets (spread evenly), converted to qcow2 (zeros unallocated).
python3 - "$work/disk.raw" "$data_mib" <<'EOF'
import random, sys
path, mib = sys.argv[1], int(sys.argv[2])
rng = random.Random(19)
with open(path, "wb") as f:
    f.truncate(mib << 20)
    for i in range(mib):
        if (i + 1) * 3 // 5 != i * 3 // 5:   # 3 of every 5 MiB
            f.seek(i << 20)
            f.write(rng.randbytes(1 << 20))
EOF
data_written=$(python3 -c "print(sum(1 for i in range($data_mib) if (i + 1) * 3 // 5 != i * 3 // 5))")
qemu-img convert -q -O qcow2 "$work/disk.raw" "$work/disk.qcow2"
rm -f "$work/disk.raw"
qemu-storage-daemon \
    --blockdev "driver=file,node-name=file0,filename=$work/disk.qcow2" \
    --blockdev driver=qcow2,node-name=disk0,file=file0 \
    --chardev "socket,path=$work/qmp.sock,server=on,wait=off,id=m" \
    --monitor chardev=m >"$work/qsd.log" 2>&1 &
qsd_pid=$!
for _ in $(seq 1 100); do [[ -S $work/qmp.sock ]] && break; sleep 0.1; done

cat > "$work/ekko.conf" <<EOF
[DEFAULT]
state_path = $work/state
[storage]
backend = local
[local_store]
fsync = false
[keystone_authtoken]
auth_url = $EKKO_KEYSTONE_AUTH_URL
username = $EKKO_SERVICE_USERNAME
password = $EKKO_SERVICE_PASSWORD
project_name = $EKKO_SERVICE_PROJECT
region_name = ${OS_REGION_NAME:-RegionOne}
interface = internal
EOF
ek() { "$ekko" --config-file "$work/ekko.conf" "$@"; }
ek init >"$work/init.log" 2>&1 || { cat "$work/init.log" >&2; exit 1; }
ek backup --instance bench-image-restore --project "$EKKO_DEMO_PROJECT_ID" \
    --qmp-socket "$work/qmp.sock" --full >"$work/backup.log" 2>&1 \
    || { cat "$work/backup.log" >&2; exit 1; }
backup=$(ek list 2>/dev/null | awk 'NR == 2 {print $1}')
stored=$(du -sm "$work/state/store" | cut -f1)
echo "disk: $data_mib MiB, $data_written MiB of random data; full backup $backup ($stored MiB stored, local store)"

# CPU seconds glance-api's processes used so far (0 if not found).
glance_pids=
if [[ -r ${EKKO_OS_STATE:-/var/lib/ekko-openstack}/run/glance-api.pid ]]; then
    gp=$(cat "${EKKO_OS_STATE:-/var/lib/ekko-openstack}/run/glance-api.pid")
    glance_pids="$gp $(pgrep -P "$gp" | tr '\n' ' ')"
fi
hz=$(getconf CLK_TCK)
glance_cpu() {
    local p t=0
    for p in $glance_pids; do
        [[ -r /proc/$p/stat ]] || continue
        t=$((t + $(awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$p/stat")))
    done
    awk -v t="$t" -v hz="$hz" 'BEGIN {printf "%.2f", t / hz}'
}

# timed STEP CMD...: run once; append its wall seconds to wall[STEP], the
# command's CPU seconds (user + system) to cpu[STEP] and glance-api's to
# gcpu[STEP]; keep the highest peak RSS (MiB) in rss[STEP]; its stdout is
# in $work/out.
declare -A wall rss cpu gcpu
info=()
timed() {
    local step=$1 t0 t1 g0 g1 kib usr sys
    shift
    g0=$(glance_cpu)
    t0=$(date +%s.%N)
    if ! /usr/bin/time -o "$work/time" -f '%M %U %S' "$@" >"$work/out" 2>"$work/err"; then
        echo "step $step failed: $*" >&2
        cat "$work/err" >&2
        exit 1
    fi
    t1=$(date +%s.%N)
    g1=$(glance_cpu)
    read -r kib usr sys < <(tail -n1 "$work/time")
    wall[$step]+="$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}') "
    cpu[$step]+="$(awk -v u="$usr" -v s="$sys" 'BEGIN {printf "%.2f", u + s}') "
    gcpu[$step]+="$(awk -v a="$g0" -v b="$g1" 'BEGIN {printf "%.2f", b - a}') "
    rss[$step]=$(awk -v k="$kib" -v o="${rss[$step]:-0}" 'BEGIN {m = k / 1024; printf "%.0f", (m > o ? m : o)}')
}
image_id() { awk '/into image/ {for (i = 1; i < NF; i++) if ($i == "image") {print $(i + 1); exit}}' "$work/out"; }

for r in $(seq 1 "$rounds"); do
    echo "round $r/$rounds"
    for fmt in raw qcow2; do
        if [[ $fmt == raw ]]; then f=a u=b i=c; else f=d u=e i=f; fi
        file=$work/restored.$fmt
        rm -f "$file"
        timed "$f" "$ekko" --config-file "$work/ekko.conf" restore "$backup" --output "$file" --format "$fmt"
        timed "$u" "${osc[@]}" image create --disk-format "$fmt" --container-format bare --private --file "$file" -f value -c id "$prefix-$u-$r"
        up=$(tail -n1 "$work/out")
        timed "$i" "$ekko" --config-file "$work/ekko.conf" restore "$backup" --image "$prefix-$i-$r" --format "$fmt"
        img=$(image_id)
        if [[ $r == 1 ]]; then
            # Same bytes? Glance's md5 of both uploads (raw: also the file's).
            sums=$(osc image show -f value -c checksum "$up"; osc image show -f value -c checksum "$img")
            vsize=$(osc image show -f value -c virtual_size "$img")
            isize=$(osc image show -f value -c size "$img")
            fsize=$(stat -c %s "$file")
            if [[ $fmt == raw ]]; then
                same=$([[ $(md5sum <"$file" | cut -d' ' -f1) == $(sed -n 1p <<<"$sums") && $(sed -n 1p <<<"$sums") == $(sed -n 2p <<<"$sums") ]] && echo "same md5 as the file" || echo "MD5 DIFFERS from the file")
            else
                same=$([[ $(sed -n 1p <<<"$sums") == $(sed -n 2p <<<"$sums") ]] && echo "same md5 as the uploaded file" || echo "other bytes than the file (another qcow2 layout of the disk)")
            fi
            info[${#info[@]}]="$fmt: file $((fsize >> 20)) MiB ($(du -m "$file" | cut -f1) MiB allocated), image $((isize >> 20)) MiB, virtual_size $((vsize >> 20)) MiB; image $same"
        fi
        osc image delete "$up" "$img" >/dev/null
        rm -f "$file"
    done
    # The CLI's fixed cost in (b) and (e): start-up, token, one request.
    timed z "${osc[@]}" image list --limit 1 -f value -c ID
done

median() { tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
declare -A med
for s in a b c d e f z; do med[$s]=$(median "${wall[$s]}"); done
declare -A names=([a]="(a) ekko restore --output, raw" [b]="(b) openstack image create --file, raw"
    [c]="(c) ekko restore --image, raw" [d]="(d) ekko restore --output, qcow2"
    [e]="(e) openstack image create --file, qcow2" [f]="(f) ekko restore --image, qcow2")
echo
echo "restore into an image vs to a file plus upload: $data_mib MiB disk ($data_written MiB data), median of $rounds"
printf '%-42s %8s %7s %8s %8s %9s  %s\n' step seconds 'MiB/s' 'CPU s' 'glance' 'peak RSS' 'runs (s)'
for s in a b c d e f; do
    printf '%-42s %8.2f %7.0f %8.2f %8.2f %5s MiB  %s\n' "${names[$s]}" "${med[$s]}" \
        "$(awk -v m="$data_mib" -v t="${med[$s]}" 'BEGIN {print m / t}')" \
        "$(median "${cpu[$s]}")" "$(median "${gcpu[$s]}")" "${rss[$s]}" "${wall[$s]% }"
done
ratio() { awk -v n="$1" -v d="$2" 'BEGIN {printf "%.2f", n / d}'; }
sum() { awk -v x="$1" -v y="$2" 'BEGIN {print x + y}'; }
echo
echo "raw:   c/a = $(ratio "${med[c]}" "${med[a]}")x   c/(a+b) = $(ratio "${med[c]}" "$(sum "${med[a]}" "${med[b]}")")x"
echo "qcow2: f/d = $(ratio "${med[f]}" "${med[d]}")x   f/(d+e) = $(ratio "${med[f]}" "$(sum "${med[d]}" "${med[e]}")")x"
echo "openstack CLI alone (image list --limit 1): ${med[z]} s of (b) and (e)"
echo "(issue 19's target: restore to an image within 1.3x of restore to a file plus upload; MiB/s of the $data_mib MiB disk;"
echo " CPU s and peak RSS: of the ekko process, or of the openstack CLI for (b) and (e); glance: glance-api's CPU s meanwhile)"
for l in "${info[@]}"; do echo "$l"; done
