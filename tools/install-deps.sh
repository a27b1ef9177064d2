#!/usr/bin/env bash
# tools/install-deps.sh - install the build and test dependencies of Ekko
# (Debian 12 "bookworm", run as root). Idempotent: installs only what is
# missing; progress goes to stderr.
#
#   - build: gcc, pkg-config, libmariadb-dev(-compat), libsqlite3-dev
#   - block devices: qemu-img, qemu-nbd, qemu-storage-daemon >= 10, from
#     bookworm-backports (bookworm main only has 7.2: never install that one,
#     it would downgrade the machine's qemu-utils)
#   - libvirt (what a Nova compute host runs): libvirtd + virtlogd 11.x,
#     qemu-system-x86 10.x, virsh, libvirt-dev (headers), nbdinfo, all from
#     bookworm-backports with the systemd family pinned to bookworm (else apt
#     upgrades systemd to the backports release); started by tools/test-env.sh
#   - Glance: glance-api (bookworm's Zed, 25.1, as python3-keystone 22),
#     after QEMU: python3-glance depends on qemu-utils, which must already be
#     the backports one; started by tools/test-env.sh
#   - benchmark peers and drivers: restic, borgbackup, wrk, curl, rclone (the
#     plain copy replication is compared with)
#   - lint: shellcheck
#   - Apache httpd (apache2-bin: the binary and modules, no service) to serve
#     the API at a path as devstack does (tests/integration/operations.rs)
#   - the container image (tools/container-test.sh): podman and runc (crun
#     refuses this kind of machine's hybrid cgroups), debootstrap for the
#     base image (no image registry is reachable)
#   - file-level restore (`ekko files`): e2fsprogs (debugfs), fuse3
#     (fusermount3, for nbdfuse run as non-root; nbdfuse is in libnbd-bin)
#   - Python tools (PyPI, pinned in tools/requirements/*.txt) in the venv
#     /opt/ekko-venv: schemathesis, python-openstackclient, Sphinx, reno
# The other OpenStack services for the integration tests are installed by
# tools/test-env.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PKGS=(gcc pkg-config libmariadb-dev libmariadb-dev-compat libsqlite3-dev
      restic borgbackup wrk curl rclone shellcheck python3-venv python3-pip
      e2fsprogs fuse3 apache2-bin podman runc debootstrap)
VENV=${EKKO_VENV:-/opt/ekko-venv}
QEMU_MIN_MAJOR=10
BACKPORTS_LIST=/etc/apt/sources.list.d/ekko-bookworm-backports.list

log() { printf '[ekko install-deps] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (uses apt-get)"
export DEBIAN_FRONTEND=noninteractive

APT_UPDATED=0
apt_update() {
  [ "$APT_UPDATED" = 1 ] && return 0
  log "apt-get update"
  apt-get -o DPkg::Lock::Timeout=900 update >&2
  APT_UPDATED=1
}
# apt_install [apt-get options...] -- PKG...: install; on failure run
# `apt-get update` once and retry.
apt_install() {
  local opts=()
  while [ "$1" != -- ]; do opts+=("$1"); shift; done
  shift
  local apt=(apt-get -o DPkg::Lock::Timeout=900 -y install --no-install-recommends "${opts[@]}")
  log "installing: $*"
  if ! "${apt[@]}" "$@" >&2; then
    [ "$APT_UPDATED" = 1 ] && die "apt-get install $* failed"
    apt_update
    "${apt[@]}" "$@" >&2 || die "apt-get install $* failed"
  fi
}
# add_backports: make bookworm-backports an apt source (once), then update.
add_backports() {
  if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    log "adding bookworm-backports to $BACKPORTS_LIST"
    echo 'deb http://deb.debian.org/debian bookworm-backports main' >"$BACKPORTS_LIST"
    APT_UPDATED=0
  fi
  apt_update
}
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# ------------------------------------------------------------ Debian packages
missing=()
for p in "${PKGS[@]}"; do
  installed "$p" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt_install -- "${missing[@]}"
else
  log "packages present: ${PKGS[*]}"
fi

# ------------------------------------------------------------ QEMU >= 10
qemu_major() {  # prints the major version of qemu-storage-daemon, or nothing
  local v
  v=$(qemu-storage-daemon --version 2>/dev/null | sed -n '1s/.*version \([0-9][0-9]*\)\..*/\1/p') || true
  printf '%s' "$v"
}
qemu_ok() {
  local m
  m=$(qemu_major)
  [ -n "$m" ] && [ "$m" -ge "$QEMU_MIN_MAJOR" ] && command -v qemu-img >/dev/null && command -v qemu-nbd >/dev/null
}
if qemu_ok; then
  log "qemu-storage-daemon $(qemu_major).x present"
else
  log "qemu-storage-daemon ${QEMU_MIN_MAJOR}+ missing (found: '$(qemu_major)'); installing qemu-utils from bookworm-backports"
  add_backports
  apt_install -t bookworm-backports -- qemu-utils
  qemu_ok || die "qemu-storage-daemon is still not version ${QEMU_MIN_MAJOR}+ after installing qemu-utils from bookworm-backports: $(qemu-storage-daemon --version 2>&1 | head -1)"
  log "qemu-storage-daemon $(qemu_major).x installed"
fi

# ------------------------------------------------------------ libvirt
# As ../shared/libvirt/README.md verified: QEMU 10 and libvirt 11.3 from
# bookworm-backports (never qemu-system from bookworm main: 7.2 would replace
# qemu-utils 10). libvirt-daemon-driver-qemu depends on `systemd-container |
# sysvinit-core`, which would pull systemd from backports: pin that family to
# bookworm (leaving out systemd-timesyncd/bookworm makes apt remove it).
LIBVIRT_PKGS=(qemu-system-x86 libvirt-daemon-driver-qemu libvirt-daemon libvirt-clients libvirt-dev libnbd-bin)
SYSTEMD_PINNED=(systemd-container/bookworm systemd/bookworm libsystemd-shared/bookworm libpam-systemd/bookworm
                libnss-systemd/bookworm libsystemd0/bookworm systemd-timesyncd/bookworm libudev1/bookworm)
qemu_system_major() {  # major version of qemu-system-x86_64, or nothing
  qemu-system-x86_64 --version 2>/dev/null | sed -n '1s/.*version \([0-9][0-9]*\)\..*/\1/p' || true
}
libvirt_ok() {
  local p m
  for p in "${LIBVIRT_PKGS[@]}"; do installed "$p" || return 1; done
  m=$(qemu_system_major)
  [ -n "$m" ] && [ "$m" -ge "$QEMU_MIN_MAJOR" ] && command -v libvirtd >/dev/null && command -v virtlogd >/dev/null \
    && command -v virsh >/dev/null
}
if libvirt_ok; then
  log "libvirt $(libvirtd --version | awk '{print $NF}') and qemu-system-x86_64 $(qemu_system_major).x present"
else
  log "installing libvirt and qemu-system-x86 from bookworm-backports (systemd pinned to bookworm)"
  add_backports
  # No init system here: keep maintainer scripts from starting daemons
  # (tools/test-env.sh starts libvirtd and virtlogd itself).
  own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; own_policy=1
  fi
  rc=0
  ( apt_install -t bookworm-backports -- "${LIBVIRT_PKGS[@]}" "${SYSTEMD_PINNED[@]}" ) || rc=$?
  [ "$own_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  [ "$rc" = 0 ] || die "installing libvirt failed"
  libvirt_ok || die "libvirt/qemu-system-x86_64 ${QEMU_MIN_MAJOR}+ still missing after the install: $(qemu-system-x86_64 --version 2>&1 | head -1)"
  log "libvirt $(libvirtd --version | awk '{print $NF}') and qemu-system-x86_64 $(qemu_system_major).x installed"
fi

# ------------------------------------------------------------ Glance
# Here and not in tools/test-env.sh's list: python3-glance depends on
# qemu-utils, and only once backports' 10.x is installed (above) does apt
# take that one instead of bookworm main's 7.2. It also brings os-brick's
# open-iscsi and udev (no daemon of theirs is used). tools/test-env.sh runs
# the eventlet glance-api itself, not Debian's init script / uWSGI setup.
GLANCE_PKGS=(glance-api)
glance_ok() { local p; for p in "${GLANCE_PKGS[@]}"; do installed "$p" || return 1; done; }
if glance_ok; then
  log "glance-api $(dpkg-query -W -f='${Version}' glance-api) present"
else
  qemu_ok || die "refusing to install glance-api before qemu-utils ${QEMU_MIN_MAJOR}+ (it would pull bookworm's qemu-utils 7.2)"
  own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; own_policy=1
  fi
  rc=0
  ( apt_install -- "${GLANCE_PKGS[@]}" ) || rc=$?
  [ "$own_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  [ "$rc" = 0 ] || die "installing glance-api failed"
  qemu_ok || die "installing glance-api changed qemu-utils: $(qemu-img --version | head -1)"
  log "glance-api $(dpkg-query -W -f='${Version}' glance-api) installed"
fi

# ------------------------------------------------------------ Python tools
# Pinned in tools/requirements/*.txt (schemathesis, the openstack CLI and
# our plugin's dependencies, Sphinx/os-api-ref/reno), all in one venv and
# one resolver run; reinstalled only when the pins change.
req_files=(tools/requirements/*.txt)
want=$(cat "${req_files[@]}" | sha256sum | cut -d' ' -f1)
stamp="$VENV/.ekko-requirements.sha256"
if [ -x "$VENV/bin/pip" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  log "Python tools present in $VENV (${req_files[*]})"
else
  log "installing Python tools into $VENV from ${req_files[*]}"
  [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
  pip_args=()
  for f in "${req_files[@]}"; do pip_args+=(-r "$f"); done
  "$VENV/bin/pip" install -q "${pip_args[@]}" >&2 || die "pip install ${pip_args[*]} failed"
  echo "$want" >"$stamp"
fi

log "done"
