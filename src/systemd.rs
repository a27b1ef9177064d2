//! systemd's readiness protocol (`Type=notify` units): `READY=1` on the
//! datagram socket `$NOTIFY_SOCKET` names, once a daemon is connected and
//! listening. Without the variable (not under systemd) nothing is sent.

use std::os::unix::net::UnixDatagram;

/// Tell systemd this daemon is ready; errors are logged, never fatal.
pub fn notify_ready() {
    if let Err(e) = notify("READY=1") {
        tracing::warn!(error = %e, "cannot tell systemd the service is ready");
    }
}

fn notify(state: &str) -> std::io::Result<()> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let socket = UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    match bytes.strip_prefix(b"@") {
        // An abstract socket (systemd's default for services).
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(state.as_bytes(), &addr)?;
        }
        None => {
            socket.send_to(state.as_bytes(), &path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_reaches_the_notify_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        // SAFETY (of the test): no other test reads or sets NOTIFY_SOCKET.
        std::env::set_var("NOTIFY_SOCKET", &path);
        notify("READY=1").unwrap();
        std::env::remove_var("NOTIFY_SOCKET");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        // Not under systemd: nothing to do, no error.
        assert!(notify("READY=1").is_ok());
    }
}
