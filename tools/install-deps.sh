#!/usr/bin/env bash
# tools/install-deps.sh - install the build and test dependencies of Ekko
# (Debian 12 "bookworm", run as root). Idempotent: installs only what is
# missing; progress goes to stderr.
#
#   - build: gcc, pkg-config, libmariadb-dev(-compat), libsqlite3-dev
#   - block devices: qemu-img, qemu-nbd, qemu-storage-daemon >= 10, from
#     bookworm-backports (bookworm main only has 7.2: never install that one,
#     it would downgrade the machine's qemu-utils)
#   - benchmark peers and drivers: restic, borgbackup, wrk, curl
#   - lint: shellcheck
#   - Python tools (PyPI, pinned in tools/requirements/*.txt) in the venv
#     /opt/ekko-venv: schemathesis, python-openstackclient, Sphinx, reno
# The OpenStack services for the integration tests are installed by
# tools/test-env.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PKGS=(gcc pkg-config libmariadb-dev libmariadb-dev-compat libsqlite3-dev
      restic borgbackup wrk curl shellcheck python3-venv python3-pip)
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
  if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    log "adding bookworm-backports to $BACKPORTS_LIST"
    echo 'deb http://deb.debian.org/debian bookworm-backports main' >"$BACKPORTS_LIST"
    APT_UPDATED=0
    apt_update
  fi
  apt_install -t bookworm-backports -- qemu-utils
  qemu_ok || die "qemu-storage-daemon is still not version ${QEMU_MIN_MAJOR}+ after installing qemu-utils from bookworm-backports: $(qemu-storage-daemon --version 2>&1 | head -1)"
  log "qemu-storage-daemon $(qemu_major).x installed"
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
