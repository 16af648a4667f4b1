//! TLS server setup from the configured certificate chain and private key (PEM).

use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

use super::RuntimeError;
use crate::config::TlsConfig;

pub(super) fn acceptor(config: &TlsConfig) -> Result<TlsAcceptor, RuntimeError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&config.certificate)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| RuntimeError::Tls {
            path: config.certificate.clone(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(RuntimeError::Tls {
            path: config.certificate.clone(),
            reason: "no certificate in the file".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&config.private_key).map_err(|e| RuntimeError::Tls {
        path: config.private_key.clone(),
        reason: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e: rustls::Error| RuntimeError::Tls {
            path: config.certificate.clone(),
            reason: e.to_string(),
        })?;
    Ok(TlsAcceptor::from(Arc::new(server)))
}
