//! TLS for the `[tls]` listeners: the rustls server configuration (certificate chain, key,
//! optional client-certificate verification against `tls.ca_file`), built once on the main
//! thread and shared by every shard's acceptor. The handshake runs on the shard that accepted
//! the socket (monoio-rustls), bounded by `limits.connect_timeout_secs`. The certificate and
//! key are behind a [`Certificates`] handle that SIGHUP reloads (new handshakes get the new
//! ones; open connections keep theirs).

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

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

/// The server's certificate and key, replaceable while the listeners run.
#[derive(Debug)]
pub struct Certificates {
    current: ArcSwap<CertifiedKey>,
    provider: Arc<CryptoProvider>,
    tls: Tls,
}

impl Certificates {
    /// Reads `tls.cert_file` and `tls.key_file` again (SIGHUP); the old pair stays on error.
    pub fn reload(&self) -> Result<(), String> {
        self.current
            .store(Arc::new(load_pair(&self.tls, &self.provider)?));
        Ok(())
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn load_pair(t: &Tls, provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let (Some(cert), Some(key_file)) = (&t.cert_file, &t.key_file) else {
        return Err("tls.listen needs tls.cert_file and tls.key_file".into());
    };
    let chain = certs(cert, "tls.cert_file")?;
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("tls.key_file {}: {e}", key_file.display()))?;
    let key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("tls.key_file {}: {e}", key_file.display()))?;
    let pair = CertifiedKey::new(chain, key);
    pair.keys_match()
        .map_err(|e| format!("tls.cert_file / tls.key_file: {e}"))?;
    Ok(pair)
}

/// Builds the acceptor from `[tls]`, with the handle that reloads its certificate; errors
/// are one line naming the file.
pub fn acceptor(t: &Tls) -> Result<(Acceptor, Arc<Certificates>), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certificates = Arc::new(Certificates {
        current: ArcSwap::from_pointee(load_pair(t, &provider)?),
        provider: provider.clone(),
        tls: t.clone(),
    });
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
    let config = builder.with_cert_resolver(certificates.clone());
    Ok((
        monoio_rustls::TlsAcceptor::from(Arc::new(config)),
        certificates,
    ))
}
