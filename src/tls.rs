//! TLS set-up shared by every client (Keystone, Swift, AMQP) and by the
//! one server that listens beyond the API: NBD exports ([`ServerTls`]).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// One TLS crypto provider (ring) for every client. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A TLS server identity: a certificate chain and its key, and, when a
/// client CA is given, the CA every client must present a certificate of
/// (QEMU's `tls-creds-x509` layout: `ca-cert.pem`, `server-cert.pem`,
/// `server-key.pem`). TLS-PSK is not offered: rustls has no PSK suites.
#[derive(Clone)]
pub struct ServerTls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// Clients must present a certificate of the client CA.
    pub verifies_clients: bool,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("verifies_clients", &self.verifies_clients)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Load PEM files; errors name the file and what is wrong with it.
    pub fn from_files(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Self, String> {
        install_crypto_provider();
        let read = |what: &str, p: &Path, e: &dyn std::fmt::Display| {
            format!("TLS {what} {}: {e}", p.display())
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| read("certificate", cert, &e))?;
        if chain.is_empty() {
            return Err(read("certificate", cert, &"no certificate in the file"));
        }
        let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| read("key", key, &e))?;
        let builder = rustls::ServerConfig::builder();
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_file_iter(ca).map_err(|e| read("client CA", ca, &e))? {
                    let c = c.map_err(|e| read("client CA", ca, &e))?;
                    roots.add(c).map_err(|e| read("client CA", ca, &e))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                    .build()
                    .map_err(|e| read("client CA", ca, &e))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder
            .with_single_cert(chain, key_der)
            .map_err(|e| read("certificate and key", cert, &e))?;
        Ok(ServerTls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            verifies_clients: client_ca.is_some(),
        })
    }
}
