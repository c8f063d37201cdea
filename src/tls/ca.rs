//! The box's own certificate authority (issue 27, docs/security.md).
//!
//! A box on a restaurant's LAN has no public domain, so no public CA will
//! sign for it. Like other LAN appliances it makes a CA of its own on first
//! start, signs a server certificate for its host names and addresses with it,
//! and lets devices download the CA (`GET /ca.crt`) and trust it after checking
//! its fingerprint (`restaurant-system tls show`).
//!
//! The files live in one directory (by default /var/lib/restaurant-system/tls):
//!
//! | file         | mode | what |
//! |--------------|------|------|
//! | `ca.crt`     | 0644 | the CA certificate (public; what devices trust) |
//! | `ca.key`     | 0600 | the CA's private key (never leaves the box) |
//! | `server.crt` | 0644 | the server certificate, then the CA (the chain served) |
//! | `server.key` | 0600 | the server certificate's private key |
//!
//! Several services of one box share the directory; whoever finds the server
//! certificate missing, near its end, or no longer naming the box's addresses
//! issues a new one under an exclusive lock, and writes every file by rename, so
//! a reader sees either the old file or the new one.

use super::TlsError;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// The CA lives ten years: re-trusting it on every device is the one step
/// that costs the restaurant work (docs/security.md says how to rotate it).
const CA_DAYS: i64 = 3650;
/// Apple's devices refuse server certificates valid for more than 825 days,
/// even under a private CA; a year keeps every platform content.
const SERVER_DAYS: i64 = 397;
/// A server certificate is renewed this long before it ends.
pub const RENEW_BEFORE_DAYS: i64 = 30;

/// The certificate and key that a listener serves (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// The server certificate followed by the CA.
    pub chain_pem: String,
    pub key_pem: String,
    /// The CA certificate alone (`GET /ca.crt`).
    pub ca_pem: String,
}

/// What `restaurant-system tls show` prints of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub subject: String,
    /// SHA-256 of the DER, upper-case hex pairs joined by ':' (as browsers show it).
    pub fingerprint: String,
    pub names: Vec<String>,
    pub not_after: OffsetDateTime,
}

fn file(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// Makes sure `dir` holds a CA and a server certificate for exactly `names`,
/// valid for at least `RENEW_BEFORE_DAYS` more at `now`; issues what is
/// missing. Returns what to serve.
pub fn ensure(
    dir: &Path,
    names: &BTreeSet<String>,
    now: OffsetDateTime,
) -> Result<Served, TlsError> {
    make_dir(dir)?;
    let lock_path = file(dir, ".lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|e| TlsError::io(&lock_path, e))?;
    // Held until the end of this function: the order and tracking services
    // start together and must not each make a CA of their own.
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| TlsError::io(&lock_path, e.into()))?;

    let (ca_pem, ca_key) = match read_pair(dir, "ca")? {
        Some((cert, key)) if still_valid(&cert, now, 0)? => (cert, key),
        _ => {
            let (cert, key) = new_ca(now)?;
            write(&file(dir, "ca.key"), key.as_bytes(), 0o600)?;
            write(&file(dir, "ca.crt"), cert.as_bytes(), 0o644)?;
            // A new CA makes every server certificate signed by the old one useless.
            let _ = fs::remove_file(file(dir, "server.crt"));
            (cert, key)
        }
    };
    if let Some((chain, key)) = read_pair(dir, "server")? {
        let fresh = still_valid(&chain, now, RENEW_BEFORE_DAYS)?;
        let same_names = summary(&chain)?.names.into_iter().collect::<BTreeSet<_>>() == *names;
        let same_ca = chain.ends_with(&ca_pem);
        if fresh && same_names && same_ca {
            return Ok(Served {
                chain_pem: chain,
                key_pem: key,
                ca_pem,
            });
        }
    }
    let (cert, key) = new_server(&ca_pem, &ca_key, names, now)?;
    let chain = format!("{cert}{ca_pem}");
    write(&file(dir, "server.key"), key.as_bytes(), 0o600)?;
    write(&file(dir, "server.crt"), chain.as_bytes(), 0o644)?;
    tracing::info!(
        action = "tls_certificate_issued",
        names = %names.iter().cloned().collect::<Vec<_>>().join(","),
        days = SERVER_DAYS,
        "Issued the box's server certificate"
    );
    Ok(Served {
        chain_pem: chain,
        key_pem: key,
        ca_pem,
    })
}

/// The CA in `dir`, if one was made (for `tls show`; makes nothing).
pub fn ca_in(dir: &Path) -> Result<Option<String>, TlsError> {
    read(&file(dir, "ca.crt"))
}

/// The server certificate in `dir`, if one was issued.
pub fn server_in(dir: &Path) -> Result<Option<String>, TlsError> {
    read(&file(dir, "server.crt"))
}

fn new_ca(now: OffsetDateTime) -> Result<(String, String), TlsError> {
    let key = KeyPair::generate().map_err(TlsError::cert)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(TlsError::cert)?;
    let mut dn = DistinguishedName::new();
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "kitchen-box".into());
    dn.push(DnType::CommonName, format!("restaurant-system CA ({host})"));
    dn.push(DnType::OrganizationName, "restaurant-system");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(CA_DAYS);
    let cert = params.self_signed(&key).map_err(TlsError::cert)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn new_server(
    ca_pem: &str,
    ca_key_pem: &str,
    names: &BTreeSet<String>,
    now: OffsetDateTime,
) -> Result<(String, String), TlsError> {
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(TlsError::cert)?;
    let issuer = Issuer::from_ca_cert_pem(ca_pem, ca_key).map_err(TlsError::cert)?;
    let key = KeyPair::generate().map_err(TlsError::cert)?;
    let mut params = CertificateParams::new(names.iter().cloned().collect::<Vec<_>>())
        .map_err(TlsError::cert)?;
    // The common name is for people reading the certificate (clients check
    // the alternative names): a host name reads better than an address.
    let mut dn = DistinguishedName::new();
    let host = names
        .iter()
        .find(|n| n.parse::<std::net::IpAddr>().is_err());
    if let Some(cn) = host.or(names.iter().next()) {
        dn.push(DnType::CommonName, cn.clone());
    }
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(SERVER_DAYS);
    let cert = params.signed_by(&key, &issuer).map_err(TlsError::cert)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Whether the first certificate of `pem` is valid at `now` and for `days` more.
fn still_valid(pem: &str, now: OffsetDateTime, days: i64) -> Result<bool, TlsError> {
    let s = summary(pem)?;
    Ok(s.not_after > now + Duration::days(days))
}

/// Reads the first certificate of a PEM text.
pub fn summary(pem: &str) -> Result<Summary, TlsError> {
    use x509_parser::prelude::*;
    let (_, block) = parse_x509_pem(pem.as_bytes())
        .map_err(|e| TlsError::Certificate(format!("not a PEM certificate: {e}")))?;
    let (_, cert) = parse_x509_certificate(&block.contents)
        .map_err(|e| TlsError::Certificate(format!("not an X.509 certificate: {e}")))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push((*d).to_string()),
                GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        names.push(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    let digest = Sha256::digest(&block.contents);
    let fingerprint = digest
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    Ok(Summary {
        subject: cert.subject().to_string(),
        fingerprint,
        names,
        not_after: cert.validity().not_after.to_datetime(),
    })
}

fn make_dir(dir: &Path) -> Result<(), TlsError> {
    fs::create_dir_all(dir).map_err(|e| TlsError::io(dir, e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| TlsError::io(dir, e))
}

fn read(path: &Path) -> Result<Option<String>, TlsError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(TlsError::io(path, e)),
    }
}

/// A certificate and its key, both present and readable (else None: make new ones).
fn read_pair(dir: &Path, stem: &str) -> Result<Option<(String, String)>, TlsError> {
    let cert = read(&file(dir, &format!("{stem}.crt")))?;
    let key = read(&file(dir, &format!("{stem}.key")))?;
    Ok(match (cert, key) {
        (Some(c), Some(k)) if summary(&c).is_ok() && KeyPair::from_pem(&k).is_ok() => Some((c, k)),
        _ => None,
    })
}

/// Writes `path` whole or not at all: a temporary file, synced, then renamed.
fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    let tmp = path.with_extension("tmp");
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| TlsError::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| TlsError::io(&tmp, e))?;
    f.sync_all().map_err(|e| TlsError::io(&tmp, e))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
        .map_err(|e| TlsError::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| TlsError::io(path, e))?;
    if let Some(parent) = path.parent() {
        // The rename itself reaches the disk only with its directory.
        if let Ok(d) = File::open(parent) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn makes_a_ca_once_and_reissues_only_when_needed() {
        let dir = tempfile::tempdir().unwrap();
        let now = OffsetDateTime::now_utc();
        let first = ensure(dir.path(), &names(&["box", "127.0.0.1"]), now).unwrap();
        let again = ensure(dir.path(), &names(&["box", "127.0.0.1"]), now).unwrap();
        assert_eq!(first, again, "nothing changed: nothing is issued");

        let s = summary(&first.chain_pem).unwrap();
        assert_eq!(
            s.names.iter().cloned().collect::<BTreeSet<_>>(),
            names(&["box", "127.0.0.1"])
        );
        let mode = |f: &str| {
            fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("ca.key"), 0o600);
        assert_eq!(mode("server.key"), 0o600);
        assert_eq!(mode("ca.crt"), 0o644);

        // A new address: a new server certificate under the same CA.
        let moved = ensure(dir.path(), &names(&["box", "10.0.0.7"]), now).unwrap();
        assert_eq!(moved.ca_pem, first.ca_pem);
        assert_ne!(moved.chain_pem, first.chain_pem);
        assert!(summary(&moved.chain_pem)
            .unwrap()
            .names
            .contains(&"10.0.0.7".to_string()));

        // Close to its end: renewed, same CA.
        let later = now + Duration::days(SERVER_DAYS - RENEW_BEFORE_DAYS + 1);
        let renewed = ensure(dir.path(), &names(&["box", "10.0.0.7"]), later).unwrap();
        assert_eq!(renewed.ca_pem, first.ca_pem);
        assert!(summary(&renewed.chain_pem).unwrap().not_after > later + Duration::days(300));
    }

    #[test]
    fn fingerprint_is_sha256_of_the_der() {
        let dir = tempfile::tempdir().unwrap();
        let served = ensure(dir.path(), &names(&["box"]), OffsetDateTime::now_utc()).unwrap();
        let s = summary(&served.ca_pem).unwrap();
        assert_eq!(s.fingerprint.len(), 32 * 3 - 1);
        assert!(s.subject.contains("restaurant-system CA"));
    }
}
