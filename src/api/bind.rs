//! Who can reach the API: `auth_strategy = noauth` believes every caller's
//! `X-Project-Id` and `X-Roles` headers (`X-Roles: admin` makes anyone a
//! cloud admin), so ekko-api refuses to start with it on an address other
//! machines reach, unless `[api] insecure_noauth_on_network` says so.

use std::net::{IpAddr, ToSocketAddrs};

use crate::config::{ApiOptions, AuthStrategy};

/// Whether `host` is reached from this machine only: an IP in 127.0.0.0/8
/// or `::1`, or a name that resolves to such addresses only. `0.0.0.0` and
/// `::` (every address) are not; neither is a name that does not resolve.
pub fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return ip.is_loopback();
    }
    match (host, 0).to_socket_addrs() {
        Ok(addrs) => {
            let addrs: Vec<_> = addrs.collect();
            !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback())
        }
        Err(_) => false,
    }
}

/// Refuse `noauth` on a non-loopback `bind_host`, naming both options,
/// unless `insecure_noauth_on_network` is set (then say so at ERROR).
pub fn check(api: &ApiOptions) -> anyhow::Result<()> {
    if api.auth_strategy != AuthStrategy::Noauth || is_loopback(&api.bind_host) {
        return Ok(());
    }
    if api.insecure_noauth_on_network {
        tracing::error!(
            bind_host = %api.bind_host,
            "[api] auth_strategy = noauth on a network address ([api] insecure_noauth_on_network = true): \
             anyone who reaches this port acts as any project, and as admin"
        );
        return Ok(());
    }
    anyhow::bail!(
        "[api] auth_strategy = noauth believes every caller's X-Project-Id and X-Roles headers, \
         and [api] bind_host = {} is not a loopback address: anyone who reaches it would be admin. \
         Use auth_strategy = keystone, bind_host = 127.0.0.1 (or ::1), or, on an isolated test \
         network only, [api] insecure_noauth_on_network = true",
        api.bind_host
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noauth(host: &str) -> ApiOptions {
        ApiOptions {
            auth_strategy: AuthStrategy::Noauth,
            bind_host: host.to_string(),
            ..Default::default()
        }
    }

    #[test]
    fn noauth_listens_on_loopback_only() {
        for host in [
            "0.0.0.0",
            "::",
            "[::]",
            "192.0.2.10",
            "no-such-host.invalid",
        ] {
            let err = check(&noauth(host)).unwrap_err().to_string();
            assert!(
                err.contains("[api] auth_strategy") && err.contains("[api] bind_host"),
                "{host}: {err}"
            );
            assert!(err.contains("insecure_noauth_on_network"), "{err}");
        }
        for host in ["127.0.0.1", "127.3.2.1", "::1", "[::1]", "localhost"] {
            assert!(check(&noauth(host)).is_ok(), "{host}");
        }
        let overridden = ApiOptions {
            insecure_noauth_on_network: true,
            ..noauth("0.0.0.0")
        };
        assert!(check(&overridden).is_ok());
        let keystone = ApiOptions {
            auth_strategy: AuthStrategy::Keystone,
            ..noauth("0.0.0.0")
        };
        assert!(check(&keystone).is_ok(), "Keystone checks every caller");
    }
}
