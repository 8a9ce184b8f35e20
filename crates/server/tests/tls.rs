//! `--cert/--key`: the server speaks HTTPS (and so WSS) with the given certificate; a plain-HTTP
//! request gets no answer; a missing key file is named. tests/data holds a test CA and a
//! certificate it signed for localhost/127.0.0.1 (openssl, P-256, 100 years; the CA's key was
//! discarded), trusted here explicitly.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use moshi_server::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{rustls, TlsConnector};

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_the_given_certificate() {
    let cfg = ServerConfig { tls: Some((data("test-cert.pem"), data("test-key.pem"))), ..ServerConfig::local_test() };
    let s = moshi_server::start(cfg, common::tiny()).await.unwrap();
    assert!(s.url().starts_with("https://"));

    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(data("test-ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(s.addr()).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = TlsConnector::from(Arc::new(client)).connect(name, tcp).await.expect("TLS handshake");
    tls.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut out = String::new();
    let _ = tls.read_to_string(&mut out).await;
    assert!(out.starts_with("HTTP/1.1 200") && out.contains("\"status\":\"ok\""), "{out}");
    // Issue 15, F9: HSTS under TLS.
    assert!(out.to_ascii_lowercase().contains("strict-transport-security: max-age=31536000"), "{out}");

    // Plain HTTP on the TLS port: the handshake fails, nothing is served.
    let mut plain = tokio::net::TcpStream::connect(s.addr()).await.unwrap();
    plain.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), plain.read_to_end(&mut buf)).await;
    assert!(!String::from_utf8_lossy(&buf).contains("\"status\""), "served over plain HTTP");
    s.shutdown().await;
}

#[tokio::test]
async fn a_missing_key_is_named() {
    let cfg = ServerConfig { tls: Some((data("test-cert.pem"), data("no-such-key.pem"))), ..ServerConfig::local_test() };
    let e = moshi_server::start(cfg, common::tiny()).await.err().expect("refused").to_string();
    assert!(e.contains("--key") && e.contains("no-such-key.pem"), "{e}");
}

/// Issue 15, F2: a connection that completes no TLS handshake is closed after
/// `--header-timeout` (it stayed open ≥ 90 s, and idle ones used up the file descriptors).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_tls_connection_is_closed() {
    let cfg = ServerConfig { tls: Some((data("test-cert.pem"), data("test-key.pem"))), header_timeout_s: 1.0, ..ServerConfig::local_test() };
    let s = moshi_server::start(cfg, common::tiny()).await.unwrap();
    let mut c = tokio::net::TcpStream::connect(s.addr()).await.unwrap();
    let t = std::time::Instant::now();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(std::time::Duration::from_secs(5), c.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "still open after 5 s");
    assert!(t.elapsed() >= std::time::Duration::from_millis(800), "{:?}", t.elapsed());
    s.shutdown().await;
}
