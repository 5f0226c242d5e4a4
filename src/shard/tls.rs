//! TLS for the `[tls]` listeners: the rustls server configuration (certificate chain, key,
//! optional client-certificate verification against `tls.ca_file`), built on the main thread
//! and shared by every shard. The handshake runs on the shard that accepted the socket,
//! bounded by `limits.connect_timeout_secs` (the caller's timeout); this module drives it
//! itself so that it can read the client certificate's common name afterwards
//! (`tls.use_identity_as_username`), then hands the session to monoio-rustls for the
//! connection's life. SIGHUP rebuilds the whole configuration ([`Tls::reload`]): new
//! handshakes get the new certificate, key and CA list; open connections keep theirs.

use std::io;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ServerConfig, ServerConnection};

use crate::config;

/// A connection after its TLS handshake.
pub type TlsStream = monoio_rustls::ServerTlsStream<TcpStream>;

/// Bytes read from the socket at a time during the handshake.
const HANDSHAKE_READ: usize = 16 * 1024;

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

/// The server configuration every TLS listener shares, replaceable while they run.
#[derive(Debug)]
pub struct Tls {
    current: ArcSwap<ServerConfig>,
    settings: config::Tls,
}

impl Tls {
    /// Builds the configuration from `[tls]`; errors are one line naming the file.
    pub fn new(settings: &config::Tls) -> Result<Self, String> {
        Ok(Self {
            current: ArcSwap::from_pointee(server_config(settings)?),
            settings: settings.clone(),
        })
    }

    /// Reads `tls.cert_file`, `tls.key_file` and `tls.ca_file` again (SIGHUP); the old
    /// configuration stays on error.
    pub fn reload(&self) -> Result<(), String> {
        self.current.store(Arc::new(server_config(&self.settings)?));
        Ok(())
    }

    /// Runs the server side of the handshake on `io` (the caller bounds it in time), and
    /// returns the stream with the common name of the client's certificate when it sent one
    /// (already verified against `tls.ca_file` by rustls).
    pub async fn accept(&self, mut io: TcpStream) -> io::Result<(TlsStream, Option<String>)> {
        let mut tls = ServerConnection::new(self.current.load_full()).map_err(io::Error::other)?;
        let mut input = Vec::with_capacity(HANDSHAKE_READ);
        let mut output = Vec::new();
        loop {
            while tls.wants_write() {
                output.clear();
                tls.write_tls(&mut output)?;
                let (res, buf) = io.write_all(output).await;
                output = buf;
                res?;
            }
            if !tls.is_handshaking() {
                break;
            }
            input.clear();
            let (res, buf) = io.read(input).await;
            input = buf;
            if res? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            // Everything read goes into rustls (application data sent right behind the
            // client's Finished waits there as plaintext), so nothing is left behind when
            // monoio-rustls takes over the socket.
            let mut rest = &input[..];
            while !rest.is_empty() {
                tls.read_tls(&mut rest)?;
                if let Err(e) = tls.process_new_packets() {
                    // Send the alert rustls queued for the peer, best effort.
                    output.clear();
                    if tls.write_tls(&mut output).is_ok() {
                        let _ = io.write_all(output).await;
                    }
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
            }
        }
        let identity = tls
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| common_name(leaf));
        Ok((TlsStream::new(io, tls), identity))
    }
}

/// The subject's common name (CN) of a DER certificate, if it has one in UTF-8.
pub fn common_name(der: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

fn server_config(t: &config::Tls) -> Result<ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (chain, key) = load_pair(t, &provider)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
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
    builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("tls.cert_file / tls.key_file: {e}"))
}

fn load_pair(
    t: &config::Tls,
    provider: &CryptoProvider,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let (Some(cert), Some(key_file)) = (&t.cert_file, &t.key_file) else {
        return Err("tls.listen needs tls.cert_file and tls.key_file".into());
    };
    let chain = certs(cert, "tls.cert_file")?;
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("tls.key_file {}: {e}", key_file.display()))?;
    // Checked here so that a key that does not fit the certificate is named as such.
    let signing = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| format!("tls.key_file {}: {e}", key_file.display()))?;
    rustls::sign::CertifiedKey::new(chain.clone(), signing)
        .keys_match()
        .map_err(|e| format!("tls.cert_file / tls.key_file: {e}"))?;
    Ok((chain, key))
}
