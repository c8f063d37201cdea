//! TLS for our clients of servers on another host (issue 27): MQTT, amqps://
//! and PostgreSQL's verify-ca / verify-full. On the box itself they all stay
//! plain on loopback.

use super::{provider, TlsError};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use std::path::Path;
use std::sync::Arc;

/// The system's CAs (Debian's ca-certificates), for a client given no CA file.
const SYSTEM_CAS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A client's TLS for a server on another host: trusts the CAs in `ca_file`
/// (PEM), or the system's when it is empty, and checks the server's name
/// against its certificate.
pub fn client_config(ca_file: &Path) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let roots = roots(ca_file)?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()
        .map_err(TlsError::cert)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// As [`client_config`], but the certificate need not name the server
/// (PostgreSQL's `sslmode=verify-ca`): its chain, dates and signatures are
/// still checked.
pub fn client_config_any_name(ca_file: &Path) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = Arc::new(provider());
    let verifier =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots(ca_file)?), provider.clone())
            .build()
            .map_err(TlsError::cert)?;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::cert)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyName(verifier)))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The CA file a client setting names: `ca_file`, or the system's when empty.
pub fn ca_file_or_system(ca_file: &Path) -> &Path {
    if ca_file.as_os_str().is_empty() {
        Path::new(SYSTEM_CAS)
    } else {
        ca_file
    }
}

fn roots(ca_file: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let path = ca_file_or_system(ca_file);
    let bad = |e: &dyn std::fmt::Display| TlsError::Certificate(format!("{}: {e}", path.display()));
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
        roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
    }
    if roots.is_empty() {
        return Err(bad(&"no CA certificate in the file"));
    }
    Ok(roots)
}

/// WebPKI's verifier minus the name check. webpki checks the chain before the
/// name, so a "not valid for name" error means the chain was good.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
