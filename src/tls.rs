//! TLS set-up shared by every client (Keystone, Swift, AMQP).

/// One TLS crypto provider (ring) for every client. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
