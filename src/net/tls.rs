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

/// Trusts nothing: the verifier when the machine has no CA certificates and no `--ca-file`.
#[derive(Debug)]
struct NoRoots(rustls::crypto::WebPkiSupportedAlgorithms);

impl ServerCertVerifier for NoRoots {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// The internet client's TLS configuration: the platform's roots and `extra` (DER), verified by
/// the platform verifier, refused certificates recorded in `refused`; and whether the system's
/// store had any certificate (`false` on minimal images without a CA bundle).
pub fn client_config(
    extra: &[Vec<u8>],
    refused: Refused,
) -> Result<(rustls::ClientConfig, bool), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let extra: Vec<CertificateDer<'static>> = extra
        .iter()
        .map(|d| CertificateDer::from(d.clone()))
        .collect();
    let platform = if extra.is_empty() {
        rustls_platform_verifier::Verifier::new(provider.clone())
    } else {
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra.clone(), provider.clone())
    };
    let system_roots = platform.is_ok();
    let inner: Arc<dyn ServerCertVerifier> = match platform {
        Ok(v) => Arc::new(v),
        // A minimal image with no CA bundle (Debian minbase, an empty container): plain http
        // (IMDS) still works, and https trusts `--ca-file` alone instead of failing to start.
        Err(e) => {
            tracing::warn!(
                "no system CA certificates ({e}): only --ca-file is trusted for https; install \
                 the ca-certificates package"
            );
            let mut roots = rustls::RootCertStore::empty();
            roots.add_parsable_certificates(extra);
            match rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider.clone(),
            )
            .build()
            {
                Ok(v) => v,
                Err(_) => Arc::new(NoRoots(provider.signature_verification_algorithms)),
            }
        }
    };
    let verifier = Recording { inner, refused };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((config, system_roots))
}

/// Whether this machine's trust store has any CA certificate (what the platform verifier loads:
/// `SSL_CERT_FILE`/`SSL_CERT_DIR`, else the distribution's bundle).
pub fn system_roots_present() -> bool {
    rustls_platform_verifier::Verifier::new(Arc::new(rustls::crypto::ring::default_provider()))
        .is_ok()
}
