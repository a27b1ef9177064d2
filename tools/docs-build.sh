#!/usr/bin/env bash
# tools/docs-build.sh - build and check the documentation:
#
#  1. the api-ref documents every operation and parameter of
#     api-ref/openapi.json (tools/api-ref-lint.py);
#  2. its samples match what a running Ekko answers: a whole Ekko on
#     loopback (tools/lib/stack.sh: real Keystone and MariaDB, `ekko
#     all-in-one`, a qemu-storage-daemon instance) is driven through every
#     operation by tools/api-samples.py --check;
#  3. the api-ref builds (sphinx-build -W, os-api-ref);
#  4. the release notes are valid (reno lint) and build (sphinx-build -W).
#
#   tools/docs-build.sh            check (CI; the test environment running)
#   tools/docs-build.sh --update   capture the samples again, then build
#
# Environment: EKKO_VENV (default /opt/ekko-venv, with
# tools/requirements/docs.txt), EKKO_NO_BUILD=1 (use target/debug as it
# is), EKKO_DOCS_OUT=DIR (keep the HTML in DIR/api-ref and
# DIR/releasenotes; by default it is thrown away).
#
# reno reads the release notes from git history: committed and staged notes
# only. So that notes not committed yet are checked and shown too, step 4
# runs in a throw-away clone of this repository (sharing its objects) with
# the working tree's releasenotes/ staged there; this repository's index is
# left alone.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

MODE=--check
case "${1:-}" in
  "") ;;
  --update) MODE=--update ;;
  *) echo "usage: $0 [--update]" >&2; exit 2 ;;
esac

VENV=${EKKO_VENV:-/opt/ekko-venv}
for tool in sphinx-build reno; do
  [ -x "$VENV/bin/$tool" ] || {
    echo "$VENV/bin/$tool missing: $VENV/bin/pip install -r tools/requirements/docs.txt" >&2
    exit 1
  }
done

log() { printf '[docs-build] %s\n' "$*" >&2; }
START=$SECONDS
step() { log "$* ($((SECONDS - START)) s)"; }

WORK=$(mktemp -d /tmp/ekko-docs.XXXXXX)
OUT=${EKKO_DOCS_OUT:-$WORK/html}
# shellcheck source=tools/lib/stack.sh
. "$ROOT/tools/lib/stack.sh"
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  stack_stop
  rm -rf "$WORK"
}
trap cleanup EXIT

step "api-ref covers api-ref/openapi.json"
python3 tools/api-ref-lint.py

step "samples: starting Ekko"
# One job at a time, so a restore can wait behind a stalled backup.
STACK_MAX_CONCURRENT=1 stack_start
step "samples: tools/api-samples.py $MODE"
python3 tools/api-samples.py "$MODE" --url "$STACK_URL" --instance "$STACK_INSTANCE" \
  --pause-pid "$STACK_QSD_PID"
stack_stop
if [ "$MODE" = --update ]; then
  python3 tools/api-ref-lint.py # the set of samples may have changed
fi

step "api-ref: sphinx-build"
"$VENV/bin/sphinx-build" -q -W -b html api-ref/source "$OUT/api-ref"

step "release notes: reno lint, sphinx-build"
git clone -q --shared "$ROOT" "$WORK/repo"
rm -rf "$WORK/repo/releasenotes"
cp -a releasenotes "$WORK/repo/releasenotes"
rm -rf "$WORK/repo/releasenotes/build"
git -C "$WORK/repo" add -A releasenotes
untracked=$(git ls-files --others --exclude-standard releasenotes/notes)
if [ -n "$untracked" ]; then
  log "notes not in git yet (checked here; add them before committing):"
  printf '  %s\n' "$untracked" >&2
fi
(
  cd "$WORK/repo"
  "$VENV/bin/reno" -q lint
  "$VENV/bin/sphinx-build" -q -W -b html releasenotes/source "$OUT/releasenotes"
)

step "done"
if [ -n "${EKKO_DOCS_OUT:-}" ]; then
  log "HTML in $OUT/api-ref and $OUT/releasenotes"
fi
