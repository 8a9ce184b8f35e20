//! HTTPS/WSS (`--cert`, `--key`): browsers allow the microphone only on localhost or HTTPS. The
//! rustls configuration; handshakes happen in the accept loop (`listen.rs`), each in its own task
//! (a slow or silent client cannot hold up the others) and under `--header-timeout`.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::{rustls, TlsAcceptor};

/// Read a PEM certificate chain and private key into a server configuration.
pub fn server_config(cert: &Path, key: &Path) -> anyhow::Result<rustls::ServerConfig> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| anyhow::anyhow!("--cert {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("--cert {}: {e}", cert.display()))?;
    anyhow::ensure!(!certs.is_empty(), "--cert {}: no certificate in the file", cert.display());
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| anyhow::anyhow!("--key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| anyhow::anyhow!("certificate and key do not form a usable pair: {e}"))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// The acceptor of `--cert`/`--key` (handshakes are run by the accept loop, `listen.rs`, each in
/// its connection's task and under the header timeout).
pub fn acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    Ok(TlsAcceptor::from(Arc::new(server_config(cert, key)?)))
}
