//! What other OpenStack libraries own in a service's configuration file.
//! Deployment tools (kolla-ansible, openstack-ansible, devstack) write
//! oslo.log's, oslo.messaging's and keystonemiddleware's options into every
//! service's file; Ekko ignores them with a warning, and
//! `ekko-manage config check --strict` refuses them.

/// Sections other OpenStack libraries own. Devstack and deployment tools
/// write them into every service's file; Ekko ignores them with a warning
/// instead of refusing to start.
pub(super) const FOREIGN_SECTIONS: &[&str] = &[
    "oslo_messaging_rabbit",
    "oslo_messaging_notifications",
    "oslo_concurrency",
    "oslo_messaging_kombu",
    "oslo_reports",
    "oslo_limit",
    "profiler",
    "cors",
    "service_user",
    "audit_middleware_notifications",
];

/// Keys of sections Ekko reads that belong to other libraries: oslo.log's
/// and oslo.service's in `[DEFAULT]`, keystonemiddleware's in
/// `[keystone_authtoken]` (kolla, openstack-ansible and devstack write
/// them), oslo.middleware's in `[healthcheck]`. Accepted with a warning.
pub(super) const FOREIGN_KEYS: &[(&str, &[&str])] = &[
    (
        "DEFAULT",
        &[
            "use_stderr",
            "use_syslog",
            "syslog_log_facility",
            "use_eventlog",
            "log_config_append",
            "log_date_format",
            "log_rotation_type",
            "log_rotate_interval",
            "log_rotate_interval_type",
            "max_logfile_count",
            "max_logfile_size_mb",
            "watch_log_file",
            "logging_context_format_string",
            "logging_default_format_string",
            "logging_debug_format_suffix",
            "logging_exception_prefix",
            "logging_user_identity_format",
            "default_log_levels",
            "publish_errors",
            "instance_format",
            "instance_uuid_format",
            "rate_limit_interval",
            "rate_limit_burst",
            "rate_limit_except_level",
            "fatal_deprecations",
            "verbose",
            "rpc_response_timeout",
            "executor_thread_pool_size",
            "graceful_shutdown_timeout",
            "my_ip",
            "api_paste_config",
            "tcp_keepidle",
            "wsgi_keep_alive",
            "client_socket_timeout",
            "max_header_line",
        ],
    ),
    (
        "keystone_authtoken",
        &[
            // The token cache is per process: memcached is not used.
            "memcached_servers",
            "memcache_secret_key",
            "memcache_security_strategy",
            "memcache_use_advanced_pool",
            "memcache_pool_maxsize",
            "memcache_pool_socket_timeout",
            "memcache_pool_unused_timeout",
            "memcache_pool_conn_get_timeout",
            "memcache_pool_dead_retry",
            "memcache_tls_enabled",
            "service_type",
            "auth_version",
            "auth_uri",
            "delay_auth_decision",
            "include_service_catalog",
            "enforce_token_bind",
            "certfile",
            "keyfile",
            "system_scope",
            "user_domain_id",
            "project_domain_id",
            "domain_id",
            "domain_name",
            "cache",
            "region_name_fallback",
        ],
    ),
    (
        "oslo_middleware",
        &[
            "max_request_body_size",
            "secure_proxy_ssl_header",
            "http_basic_auth_user_file",
        ],
    ),
    (
        "healthcheck",
        // Not `disable_by_file_paths` or `allowed_source_ranges`: an
        // operator who sets them expects draining or a restriction, so
        // they stop start-up instead of being ignored.
        &["path", "backends", "enabled", "ignore_proxied_requests"],
    ),
];

/// Whether `key` of `section` belongs to another library.
pub(super) fn foreign_key(section: &str, key: &str) -> bool {
    FOREIGN_KEYS
        .iter()
        .any(|(s, keys)| s.eq_ignore_ascii_case(section) && keys.contains(&key))
}
