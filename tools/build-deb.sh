#!/usr/bin/env bash
# Build Ekko's Debian package from built binaries, with dpkg-deb (no
# other packaging tool needed):
#
#   tools/build-deb.sh [--bin-dir DIR] [--out DIR]
#
# --bin-dir: where ekko, ekko-api, ekko-backup, ekko-retention, ekko-manage
# and ekko-status are (default target/release; `cargo build --release
# --bins` first). --out: where ekko_<version>_<arch>.deb is written
# (default target/debian). EKKO_DEB_COMPRESSION (xz by default; CI uses
# none for speed) is passed to dpkg-deb -Z. Prints the package's path.
#
# The package installs the binaries in /usr/bin, the systemd units of the
# three daemons in /lib/systemd/system (not enabled or started: a
# controller runs ekko-api and ekko-retention, a compute host ekko-backup),
# /etc/ekko/ekko.conf (every option commented out: the single-machine
# defaults) and policy.yaml.sample, and creates the ekko system user.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bin_dir=target/release
out=target/debian
while [[ $# -gt 0 ]]; do
    case $1 in
        --bin-dir) bin_dir=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        *) echo "usage: $0 [--bin-dir DIR] [--out DIR]" >&2; exit 2 ;;
    esac
done
binaries=(ekko ekko-api ekko-backup ekko-retention ekko-manage ekko-status)
for b in "${binaries[@]}"; do
    [[ -x $bin_dir/$b ]] || { echo "$bin_dir/$b is missing: cargo build --release --bins" >&2; exit 1; }
done
version=$(awk -F'"' '/^version *=/ { print $2; exit }' Cargo.toml)
arch=$(dpkg --print-architecture)

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
install -d "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" "$root/etc/ekko" \
    "$root/usr/share/doc/ekko"
for b in "${binaries[@]}"; do
    # Stripped, as Debian ships binaries (symbols: keep the build tree).
    install -s -m 0755 "$bin_dir/$b" "$root/usr/bin/$b"
done
install -m 0644 etc/systemd/*.service "$root/lib/systemd/system/"
install -m 0640 etc/ekko/ekko.conf.sample "$root/etc/ekko/ekko.conf"
install -m 0644 etc/ekko/policy.yaml.sample "$root/etc/ekko/policy.yaml.sample"
install -m 0644 LICENSE "$root/usr/share/doc/ekko/copyright"
install -m 0644 README.md "$root/usr/share/doc/ekko/README.md"

size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
# The packages of the shared libraries the binaries load (what
# dpkg-shlibdeps would find, without a debian/ directory).
depends=$(for b in "${binaries[@]}"; do ldd "$root/usr/bin/$b"; done \
    | awk '$3 ~ /^\// { print $3 }' | sort -u \
    | while read -r lib; do dpkg -S "$(readlink -f "$lib")" 2>/dev/null || dpkg -S "$lib" 2>/dev/null; done \
    | cut -d: -f1 | sort -u | paste -sd, | sed 's/,/, /g')
[[ -n $depends ]] || { echo "cannot tell which packages the binaries need" >&2; exit 1; }
cat >"$root/DEBIAN/control" <<CONTROL
Package: ekko
Version: $version
Architecture: $arch
Maintainer: Ekko developers <ekko@localhost>
Installed-Size: $size
Depends: $depends, adduser
Recommends: qemu-utils
Suggests: libvirt-daemon-system
Section: admin
Priority: optional
Homepage: https://opendev.org/openstack/ekko
Description: block-based backup for OpenStack instances
 Ekko backs up OpenStack instances block by block: incremental backups
 read only what changed (QEMU dirty bitmaps, libvirt checkpoints), data is
 deduplicated, compressed and optionally encrypted into Swift or a local
 directory, and every backup restores on its own. This package holds the
 REST API and conductor (ekko-api), the compute host worker (ekko-backup),
 the retention worker (ekko-retention) and the ekko, ekko-manage and
 ekko-status commands, with systemd units for the three daemons.
CONTROL
echo /etc/ekko/ekko.conf >"$root/DEBIAN/conffiles"
cat >"$root/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    if ! getent passwd ekko >/dev/null; then
        adduser --system --group --home /var/lib/ekko --no-create-home ekko
    fi
    # 0755: QEMU's user must reach the job directories ekko-backup hands
    # it below; what Ekko keeps there is created 0640/0750.
    install -d -o ekko -g ekko -m 0755 /var/lib/ekko
    install -d -o ekko -g ekko -m 0750 /var/log/ekko
    chgrp ekko /etc/ekko/ekko.conf
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
    fi
fi
POSTINST
cat >"$root/DEBIAN/postrm" <<'POSTRM'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
POSTRM
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/postrm"

mkdir -p "$out"
deb="$out/ekko_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Z"${EKKO_DEB_COMPRESSION:-xz}" --build "$root" "$deb" >/dev/null
echo "$deb"
