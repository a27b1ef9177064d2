#!/usr/bin/env bash
# Build Ekko's container image (etc/container/Dockerfile) with podman and run
# it, as CI does:
#
#   tools/container-test.sh [--bin-dir DIR]
#
# --bin-dir: the binaries to package (default target/debug: the ones the test
# suite built; a release build is what the Dockerfile's build stage makes).
#
# No image registry is reachable from this machine, so:
#   - the runtime base (Debian bookworm, what debian:bookworm-slim is) is made
#     with debootstrap from Debian's archive and imported as
#     localhost/ekko-base:bookworm, kept between runs;
#   - the image takes the package tools/build-deb.sh makes from --bin-dir
#     (the PACKAGE build argument): nothing is compiled in the image (the
#     build stage runs on the base image and only hands the package on).
# Everything after the package is the Dockerfile's own runtime stage.
#
# Checks: every binary in the image answers --version with Cargo.toml's
# version; the image runs as the unprivileged `ekko` user (uid 42480) with
# umask 027 and holds no copy of the package; `ekko-manage db
# sync` then `ekko-api` from the image (single-machine default: SQLite and the
# local store in the /var/lib/ekko volume, noauth on loopback) answer
# /healthcheck and an API listing; the image's size is printed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bin_dir=target/debug
while [[ $# -gt 0 ]]; do
    case $1 in
        --bin-dir) bin_dir=$2; shift 2 ;;
        *) echo "usage: $0 [--bin-dir DIR]" >&2; exit 2 ;;
    esac
done

log() { printf '[ekko container-test] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
command -v podman >/dev/null || die "podman is missing: tools/install-deps.sh"

version=$(awk -F'"' '/^version *=/ { print $2; exit }' Cargo.toml)
base=localhost/ekko-base:bookworm
image=localhost/ekko:test
volume=ekko-container-test
work=$(mktemp -d)
api=""
cleanup() {
    [[ -z $api ]] || podman rm -f "$api" >/dev/null 2>&1 || true
    podman volume rm -f "$volume" >/dev/null 2>&1 || true
    # The image and its build's layers (each run's package differs: nothing
    # would be reused); the debootstrap base stays.
    podman rmi -f "$image" >/dev/null 2>&1 || true
    podman image prune -f >/dev/null 2>&1 || true
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT

# This machine's sandbox: no CAP_SYS_RESOURCE (podman's default limits of
# 1M open files cannot be set), and hybrid cgroups, which crun refuses.
cat >"$work/containers.conf" <<'CONF'
[containers]
default_ulimits = ["nofile=16384:16384", "nproc=16384:16384"]
[engine]
runtime = "runc"
CONF
export CONTAINERS_CONF=$work/containers.conf

if ! podman image exists "$base"; then
    log "making $base with debootstrap (minbase, as debian:bookworm-slim)"
    rootfs=$work/rootfs
    debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >&2
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | podman import - "$base" >/dev/null
    rm -rf "$rootfs"
fi

log "packaging $bin_dir"
rm -rf target/container
deb=$(EKKO_DEB_COMPRESSION=none bash tools/build-deb.sh --bin-dir "$bin_dir" --out target/container)

log "building $image"
podman build --layers=false --network host -f etc/container/Dockerfile \
    --build-arg BASE_IMAGE="$base" --build-arg RUST_IMAGE="$base" --build-arg PACKAGE="$deb" \
    --build-arg EKKO_VERSION="$version" -t "$image" . >&2

for b in ekko ekko-api ekko-backup ekko-retention ekko-manage ekko-status; do
    out=$(podman run --rm --network none "$image" "$b" --version)
    [[ $out == *"$version"* ]] || die "$b --version in the image said: $out"
done
who=$(podman run --rm --network none "$image" sh -c 'echo "$(id -un) $(id -u) $(umask)"')
[[ $who == "ekko 42480 0027" ]] || die "the image runs as (user uid umask) $who, not ekko 42480 0027"
podman run --rm --network none "$image" sh -c '! ls /tmp/packages/*.deb' >/dev/null 2>&1 \
    || die "the image holds a copy of the package"
label=$(podman image inspect --format '{{index .Labels "org.opencontainers.image.version"}}' "$image")
[[ $label == "$version" ]] || die "image version label: $label"

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
env=(-e OS_API__BIND_HOST=127.0.0.1 -e OS_API__BIND_PORT="$port" -e OS_API__AUTH_STRATEGY=noauth)
podman volume rm -f "$volume" >/dev/null 2>&1 || true
podman run --rm --network none -v "$volume:/var/lib/ekko" "$image" \
    ekko-manage --config-file /etc/ekko/ekko.conf db sync >&2
api=$(podman run -d --network host -v "$volume:/var/lib/ekko" "${env[@]}" "$image")
url=http://127.0.0.1:$port
for _ in $(seq 100); do
    curl -fsS "$url/healthcheck" >/dev/null 2>&1 && break
    [[ $(podman inspect --format '{{.State.Running}}' "$api") == true ]] \
        || { podman logs "$api" >&2; die "ekko-api in the image exited"; }
    sleep 0.2
done
health=$(curl -fsS "$url/healthcheck") || { podman logs "$api" >&2; die "no /healthcheck"; }
[[ $health == OK ]] || die "/healthcheck said: $health"
listing=$(curl -fsS -H 'X-Project-Id: 0123456789abcdef0123456789abcdef' "$url/v1/backups")
[[ $listing == *'"backups"'* ]] || die "GET /v1/backups said: $listing"
# The catalog is in the volume, made by the db sync run above.
podman run --rm --network none -v "$volume:/var/lib/ekko" "$image" test -s /var/lib/ekko/ekko.sqlite \
    || die "the catalog is not in the volume"

size=$(podman image inspect --format '{{.Size}}' "$image")
log "OK: $image (ekko $version, $((size / 1024 / 1024)) MiB): binaries, user ekko, db sync, /healthcheck and /v1/backups from the image"
