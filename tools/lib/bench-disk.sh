# shellcheck shell=bash
# Sourced by the benchmark scripts (tools/bench-export.sh, tools/bench-s3.sh).
# bench_disk WORK SIZE_MIB: WORK/disk.raw of SIZE_MIB MiB (random data in
# the first MiB of every 2 MiB, the rest zero) and WORK/disk.qcow2 of it,
# played by a qemu-storage-daemon whose QMP socket is WORK/qmp.sock; sets
# qsd_pid (the caller's cleanup stops it).
bench_disk() {
    local work=$1 size_mib=$2
    python3 - "$work/disk.raw" "$size_mib" <<'PY'
import os, sys
path, mib = sys.argv[1], int(sys.argv[2])
with open(path, "wb") as f:
    f.truncate(mib << 20)
    for i in range(0, mib, 2):
        f.seek(i << 20)
        f.write(os.urandom(1 << 20))
PY
    qemu-img convert -f raw -O qcow2 "$work/disk.raw" "$work/disk.qcow2"
    qemu-storage-daemon \
        --blockdev "driver=file,node-name=file0,filename=$work/disk.qcow2" \
        --blockdev driver=qcow2,node-name=disk0,file=file0 \
        --chardev "socket,path=$work/qmp.sock,server=on,wait=off,id=qmp0" \
        --monitor chardev=qmp0 &
    # shellcheck disable=SC2034 # the caller's
    qsd_pid=$!
    for _ in $(seq 200); do [[ -S $work/qmp.sock ]] && break; sleep 0.05; done
}
