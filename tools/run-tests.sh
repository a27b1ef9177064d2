#!/usr/bin/env bash
# tools/run-tests.sh [CARGO TEST ARGS...] - run Ekko's whole test suite.
#
#   1. tools/install-deps.sh        build/test dependencies (apt, idempotent)
#   2. tools/test-env.sh            real Keystone, Swift, MariaDB, RabbitMQ,
#                                   memcached on 127.0.0.1 (idempotent)
#   3. cargo fmt --check
#   4. cargo clippy --all-targets -- -D warnings
#   5. cargo test --all-targets "$@" (unit + integration tests)
#   6. tools/schemathesis.sh: the API against its OpenAPI document
#   7. tools/osc-test.sh: the real `openstack` CLI with our plugin
#   8. tools/docs-build.sh: api-ref samples from real responses, api-ref
#      and release notes built with Sphinx (warnings are errors), reno lint
#   9. tools/devstack-test.sh: the devstack plugin's phases
#  10. tools/container-test.sh: the container image builds (podman) and runs
#  11. shellcheck on tools/, devstack/ and .ci/run
#
# EKKO_TEST_REQUIRE_SERVICES=1 is exported, so integration tests fail instead
# of skipping when a service is missing. Works from any directory; must run as
# root (apt-get, daemons, loop mounts). This is what CI runs (.ci/run).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

# rustup's toolchain, when the calling shell did not source ~/.cargo/env
if ! command -v cargo >/dev/null 2>&1 && [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]; then
  PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi

T_START=$SECONDS
STEP=0
banner() {
  STEP=$((STEP + 1))
  printf '\n==================== [%d] %s  (+%ds)\n' "$STEP" "$*" "$((SECONDS - T_START))"
}
on_exit() {
  local rc=$?
  [ "$rc" = 0 ] || printf '\n==================== FAILED in step [%d] (exit %d, +%ds)\n' "$STEP" "$rc" "$((SECONDS - T_START))" >&2
}
trap on_exit EXIT

banner "install dependencies (tools/install-deps.sh)"
bash tools/install-deps.sh

banner "start test services (tools/test-env.sh)"
# Assignment, not eval "$(...)": a failing start must stop the run (set -e).
env_exports=$(bash tools/test-env.sh)
eval "$env_exports"
export EKKO_TEST_REQUIRE_SERVICES=1
echo "services up; environment from $EKKO_OS_STATE/env.sh, EKKO_TEST_REQUIRE_SERVICES=1"

# rustfmt/clippy are rustup components; add them if this toolchain lacks them.
for comp in rustfmt clippy; do
  sub=${comp/rustfmt/fmt}
  if ! cargo "$sub" --version >/dev/null 2>&1 && command -v rustup >/dev/null 2>&1; then
    echo "adding rustup component $comp"
    rustup component add "$comp"
  fi
done

banner "cargo fmt --check"
cargo fmt --check

banner "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

banner "cargo test --all-targets $*"
cargo test --all-targets "$@"

banner "schemathesis against ekko-api (tools/schemathesis.sh)"
bash tools/schemathesis.sh

banner "openstack CLI plugin against a whole Ekko (tools/osc-test.sh)"
bash tools/osc-test.sh

banner "api-ref samples, api-ref and release notes builds (tools/docs-build.sh)"
bash tools/docs-build.sh

banner "devstack plugin phases against stand-ins (tools/devstack-test.sh)"
bash tools/devstack-test.sh

banner "container image (tools/container-test.sh)"
bash tools/container-test.sh

shopt -s nullglob
scripts=(tools/*.sh tools/lib/*.sh devstack/*.sh devstack/settings devstack/lib/* .ci/run)
shopt -u nullglob
banner "shellcheck ${scripts[*]}"
shellcheck -x "${scripts[@]}"

banner "all tests passed"
