//! TLS for the internet client: the platform's roots plus `--ca-file`, and, when a server's
//! certificate is refused, who it claimed to be.
//!
//! A refused chain is not a network hiccup: retrying cannot fix it, and "invalid peer certificate:
//! UnknownIssuer" does not say what to do. The verifier here wraps the platform verifier and keeps
//! the end-entity certificate of every refused handshake, so the error can name its subject and
//! issuer and say whether a private CA (`--ca-file`) is the fix.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// The CA certificates of a PEM file (at least one, each a parseable X.509 certificate).
pub fn read_pem_certs(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let mut certs = vec![];
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| e.to_string())? {
        let cert = cert.map_err(|e| format!("not PEM: {e}"))?;
        x509_parser::parse_x509_certificate(&cert)
            .map_err(|e| format!("a certificate that does not parse: {e}"))?;
        certs.push(cert.to_vec());
    }
    if certs.is_empty() {
        return Err("no certificate in it (expected -----BEGIN CERTIFICATE-----)".into());
    }
    Ok(certs)
}

/// Subject and issuer of a DER certificate, as `CN=…, O=…`.
pub fn names(der: &[u8]) -> Option<(String, String)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some((cert.subject().to_string(), cert.issuer().to_string()))
}

/// The certificates servers presented in refused handshakes, by server name.
#[derive(Clone, Default)]
pub struct Refused(Arc<Mutex<HashMap<String, Vec<u8>>>>);

impl Refused {
    pub fn get(&self, host: &str) -> Option<Vec<u8>> {
        self.0.lock().ok()?.get(&host.to_ascii_lowercase()).cloned()
    }
}

#[derive(Debug)]
struct Recording {
    inner: Arc<dyn ServerCertVerifier>,
    refused: Refused,
}

impl std::fmt::Debug for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Refused")
    }
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let result = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        if result.is_err()
            && let Ok(mut map) = self.refused.0.lock()
        {
            let host = match server_name {
                ServerName::DnsName(d) => d.as_ref().to_ascii_lowercase(),
                ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
                _ => String::new(),
            };
            map.insert(host, end_entity.to_vec());
        }
        result
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The internet client's TLS configuration: the platform's roots and `extra` (DER), verified by
/// the platform verifier, refused certificates recorded in `refused`.
pub fn client_config(extra: &[Vec<u8>], refused: Refused) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let extra: Vec<CertificateDer<'static>> = extra
        .iter()
        .map(|d| CertificateDer::from(d.clone()))
        .collect();
    let inner = if extra.is_empty() {
        rustls_platform_verifier::Verifier::new(provider.clone())
    } else {
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider.clone())
    }
    .map_err(|e| e.to_string())?;
    let verifier = Recording {
        inner: Arc::new(inner),
        refused,
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
