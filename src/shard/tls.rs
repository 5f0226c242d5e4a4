//! TLS for the `[tls]` listeners: the rustls server configuration (certificate chain, key,
//! optional client-certificate verification against `tls.ca_file`), built once on the main
//! thread and shared by every shard's acceptor. The handshake runs on the shard that accepted
//! the socket (monoio-rustls), bounded by `limits.connect_timeout_secs`.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use crate::config::Tls;

/// The acceptor every TLS listener shares.
pub type Acceptor = monoio_rustls::TlsAcceptor;

fn certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{what} {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {}: no PEM certificate in it",
            path.display()
        ));
    }
    Ok(certs)
}

/// Builds the acceptor from `[tls]`; errors are one line naming the file.
pub fn acceptor(t: &Tls) -> Result<Acceptor, String> {
    let (Some(cert), Some(key)) = (&t.cert_file, &t.key_file) else {
        return Err("tls.listen needs tls.cert_file and tls.key_file".into());
    };
    let chain = certs(cert, "tls.cert_file")?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("tls.key_file {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?;
    let builder = match &t.ca_file {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(ca, "tls.ca_file")? {
                roots
                    .add(c)
                    .map_err(|e| format!("tls.ca_file {}: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if t.require_certificate {
                verifier.build()
            } else {
                verifier.allow_unauthenticated().build()
            }
            .map_err(|e| format!("tls.ca_file {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("tls.cert_file / tls.key_file: {e}"))?;
    Ok(monoio_rustls::TlsAcceptor::from(Arc::new(config)))
}
