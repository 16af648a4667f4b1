//! TLS setup: the server side from the configured certificate chain and private key,
//! and the client side towards the PBX, trusting only the configured CA (PEM).

use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::RuntimeError;
use crate::config::{PbxConfig, TlsConfig};

/// What an outbound TLS connection to the PBX needs.
#[derive(Clone)]
pub(super) struct PbxTls {
    pub(super) connector: TlsConnector,
    pub(super) server_name: ServerName<'static>,
    /// The PBX's TLS targets (RFC 3263 may give several): the only peers TLS goes to.
    peers: Arc<RwLock<Vec<SocketAddr>>>,
}

impl PbxTls {
    /// Whether `remote` is one of the PBX's TLS targets.
    pub(super) fn is_peer(&self, remote: SocketAddr) -> bool {
        self.peers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&remote)
    }

    /// The PBX's TLS targets, after a resolution.
    pub(super) fn set_peers(&self, peers: Vec<SocketAddr>) {
        *self.peers.write().unwrap_or_else(PoisonError::into_inner) = peers;
    }
}

impl std::fmt::Debug for PbxTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PbxTls")
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// The client configuration for `pbx.transport = "tls"`: trusts the certificates in
/// `pbx.tls_ca` only, and checks the name `pbx.tls_server_name` (default: the host).
pub(super) fn pbx_connector(pbx: &PbxConfig) -> Result<PbxTls, RuntimeError> {
    let Some(ca) = &pbx.tls_ca else {
        return Err(RuntimeError::Unsupported(
            "pbx.transport = \"tls\" needs pbx.tls_ca",
        ));
    };
    let fail = |reason: String| RuntimeError::Tls {
        path: ca.clone(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| fail(e.to_string()))?;
    for cert in certs {
        roots.add(cert).map_err(|e| fail(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(fail("no certificate in the file".into()));
    }
    let name = pbx
        .tls_server_name
        .clone()
        .unwrap_or_else(|| pbx.host.clone());
    let server_name =
        ServerName::try_from(name).map_err(|e| fail(format!("bad server name: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(PbxTls {
        connector: TlsConnector::from(Arc::new(client)),
        server_name,
        peers: Arc::default(),
    })
}

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
