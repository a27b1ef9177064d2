# shellcheck shell=bash
# devstack/plugin.sh - the Ekko devstack plugin.
#
# Enable it in local.conf:
#
#   [[local|localrc]]
#   enable_plugin ekko <git url of ekko> [gitref]
#
# devstack sources devstack/settings first, then this file as
# `source plugin.sh <mode> [phase]` (stack pre-install|install|post-config|
# extra|test-config, unstack, clean). The functions live in devstack/lib/ekko.

_EKKO_XTRACE=$(set +o | grep xtrace)
set -o xtrace

# shellcheck source=/dev/null  # devstack/lib/ekko, checked on its own
source "$(dirname "${BASH_SOURCE[0]}")/lib/ekko"

if is_service_enabled ekko-api ekko-backup ekko-retention; then
    if [[ "${1:-}" == "stack" && "${2:-}" == "install" ]]; then
        echo_summary "Installing Ekko"
        install_ekko
        install_ekkoclient

    elif [[ "${1:-}" == "stack" && "${2:-}" == "post-config" ]]; then
        echo_summary "Configuring Ekko"
        configure_ekko
        if is_service_enabled ekko-api; then
            create_ekko_accounts
            if [[ "$EKKO_USE_APACHE" == "True" ]]; then
                configure_ekko_apache
            fi
        fi
        if ekko_uses_database; then
            init_ekko_database
        fi

    elif [[ "${1:-}" == "stack" && "${2:-}" == "extra" ]]; then
        echo_summary "Starting Ekko"
        if ekko_uses_database; then
            sync_ekko_database
        fi
        start_ekko

    elif [[ "${1:-}" == "stack" && "${2:-}" == "test-config" ]]; then
        if ekko_uses_database; then
            echo_summary "Checking Ekko"
            check_ekko
        fi
    fi

    if [[ "${1:-}" == "unstack" ]]; then
        stop_ekko
    fi

    if [[ "${1:-}" == "clean" ]]; then
        cleanup_ekko
    fi
fi

$_EKKO_XTRACE
