//! TLS for the simulated Azure DevOps and download host: a test CA made at start (rcgen), a
//! server certificate for `127.0.0.1`/`localhost` signed by it, and a TLS listener serving the
//! same routes. The CA's PEM is written to the work dir for `--ca-file`; nothing trusts it unless
//! told to.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

pub struct TestCa {
    /// The CA certificate (PEM), for `--ca-file`.
    pub ca_file: PathBuf,
    pub server_config: Arc<rustls::ServerConfig>,
}

fn err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// A fresh test CA and server certificate for `127.0.0.1` and `localhost`, in `dir`.
pub fn make(dir: &Path) -> std::io::Result<TestCa> {
    load_or_make(dir, &[])
}

/// The test CA and server certificate kept in `dir` (`ca.pem`, `server.pem`, `server.key`), made
/// there first if missing, the server certificate naming `127.0.0.1`, `localhost` and `names`.
/// Kept, the same CA survives a restart of the simulator: the booted-VM test installs it into the
/// guest's system trust store as a corporate image carries its own root.
pub fn load_or_make(dir: &Path, names: &[String]) -> std::io::Result<TestCa> {
    fs_err::create_dir_all(dir)?;
    let (ca_file, chain_file, key_file) = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    if !(ca_file.is_file() && chain_file.is_file() && key_file.is_file()) {
        write_new(dir, names)?;
    }
    use rustls::pki_types::pem::PemObject;
    let chain = rustls::pki_types::CertificateDer::pem_file_iter(&chain_file)
        .map_err(err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&key_file).map_err(err)?;
    let server_config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(err)?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(err)?;
    Ok(TestCa {
        ca_file,
        server_config: Arc::new(server_config),
    })
}

fn write_new(dir: &Path, names: &[String]) -> std::io::Result<()> {
    let ca_key = KeyPair::generate().map_err(err)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Simulated Corp Root CA");
    ca_params
        .distinguished_name
        .push(DnType::OrganizationName, "agent-bootstrap tests");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(err)?;

    let leaf_key = KeyPair::generate().map_err(err)?;
    let mut sans = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
    sans.extend(names.iter().cloned());
    let mut leaf_params = CertificateParams::new(sans).map_err(err)?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "dev.azure.simulated");
    let leaf = leaf_params.signed_by(&leaf_key, &ca).map_err(err)?;

    fs_err::write(dir.join("ca.pem"), ca.pem())?;
    fs_err::write(
        dir.join("server.pem"),
        format!("{}{}", leaf.pem(), ca.pem()),
    )?;
    fs_err::write(dir.join("server.key"), leaf_key.serialize_pem())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs_err::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        fs_err::set_permissions(dir.join("ca.pem"), std::fs::Permissions::from_mode(0o644))?;
        fs_err::set_permissions(
            dir.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )?;
    }
    Ok(())
}

/// Serves `app` over TLS on `listener` until the runtime ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
    app: axum::Router,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            // A client that refuses the certificate ends the handshake: nothing to serve.
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
        });
    }
}
