//! The link's TLS: the client certificate and key (re-read before every connection,
//! used only once both parse and match), the trust roots, and what a TLS failure means.
//! rustls and x509-parser types stop here.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls::{AlertDescription, ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Checks a PEM certificate and key in memory (parse, CN, match): who the pair names.
pub fn check_pair(cert_pem: &[u8], key_pem: &[u8]) -> Result<Identity, CredentialError> {
    let here = Path::new("(received)");
    parse(here, here, (cert_pem.to_vec(), key_pem.to_vec())).map(|c| c.identity)
}

/// Who the certificate says we are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The subject CN: the agent id.
    pub agent_id: String,
    pub not_after: SystemTime,
    /// Hex, as `openssl x509 -serial` prints it.
    pub serial: String,
}

/// A certificate chain and its matching key.
pub struct Credentials {
    pub identity: Identity,
    certified: Arc<CertifiedKey>,
    files: (Vec<u8>, Vec<u8>),
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error(
        "read {path}: {err} (the client certificate and key are PEM files; see --cloud-cert/--cloud-key)"
    )]
    Read { path: PathBuf, err: io::Error },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path}: the certificate cannot be read: {err}")]
    BadCertificate { path: PathBuf, err: String },
    #[error("{path}: the certificate's subject has no CN (the CN is the agent id)")]
    NoCommonName { path: PathBuf },
    #[error("{path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { path: PathBuf },
    #[error("the key {key} does not match the certificate {cert}: {err}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        err: String,
    },
    #[error("the trust roots: {0}")]
    Roots(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads the pair from disk and checks it: chain parses, leaf has a CN, key matches.
pub fn load(cert: &Path, key: &Path) -> Result<Credentials, CredentialError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|err| CredentialError::Read {
            path: p.to_owned(),
            err,
        })
    };
    let files = (read(cert)?, read(key)?);
    parse(cert, key, files)
}

fn parse(
    cert: &Path,
    key: &Path,
    files: (Vec<u8>, Vec<u8>),
) -> Result<Credentials, CredentialError> {
    let chain = CertificateDer::pem_slice_iter(&files.0)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CredentialError::BadCertificate {
            path: cert.to_owned(),
            err: e.to_string(),
        })?;
    let leaf = chain
        .first()
        .ok_or_else(|| CredentialError::NoCertificate {
            path: cert.to_owned(),
        })?;
    let identity = identity(leaf).map_err(|e| match e {
        None => CredentialError::NoCommonName {
            path: cert.to_owned(),
        },
        Some(err) => CredentialError::BadCertificate {
            path: cert.to_owned(),
            err,
        },
    })?;
    let pkey = PrivateKeyDer::from_pem_slice(&files.1).map_err(|_| CredentialError::NoKey {
        path: key.to_owned(),
    })?;
    let mismatch = |err: String| CredentialError::Mismatch {
        cert: cert.to_owned(),
        key: key.to_owned(),
        err,
    };
    let certified =
        CertifiedKey::from_der(chain, pkey, &provider()).map_err(|e| mismatch(e.to_string()))?;
    certified
        .keys_match()
        .map_err(|e| mismatch(e.to_string()))?;
    Ok(Credentials {
        identity,
        certified: Arc::new(certified),
        files,
    })
}

/// The leaf's CN, expiry and serial; `Err(None)` when it has no CN.
fn identity(leaf: &CertificateDer) -> Result<Identity, Option<String>> {
    let (_, x) =
        x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| Some(e.to_string()))?;
    let cn = x
        .subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .filter(|s| !s.is_empty())
        .ok_or(None)?;
    let ts = x.validity().not_after.timestamp();
    let not_after = UNIX_EPOCH + Duration::from_secs(u64::try_from(ts).unwrap_or(0));
    let serial = x.raw_serial().iter().map(|b| format!("{b:02X}")).collect();
    Ok(Identity {
        agent_id: cn.to_owned(),
        not_after,
        serial,
    })
}

/// The pair in use, re-read before each connection. A pair that changed on disk replaces
/// it only once both files parse and match; until then (a renewal half written, say) the
/// previous pair stays in use and the new one is warned about once.
pub struct CredentialStore {
    cert: PathBuf,
    key: PathBuf,
    current: Option<Credentials>,
    warned: Option<(Vec<u8>, Vec<u8>)>,
}

impl CredentialStore {
    pub fn new(cert: PathBuf, key: PathBuf) -> Self {
        CredentialStore {
            cert,
            key,
            current: None,
            warned: None,
        }
    }

    /// The pair to use for the next connection.
    pub fn refresh(&mut self) -> Result<&Credentials, CredentialError> {
        let keep = |e: &CredentialError| tracing::warn!(error = %e, "cloud: the client certificate or key on disk is not usable; keeping the previous pair");
        match self.read_files() {
            Ok(files) if self.current.as_ref().is_some_and(|c| c.files == files) => {}
            Ok(files) => match parse(&self.cert, &self.key, files.clone()) {
                Ok(c) => {
                    if self.current.is_some() {
                        tracing::info!(agent_id = %c.identity.agent_id, serial = %c.identity.serial,
                            cert = %self.cert.display(), "cloud: a new client certificate is on disk; the next connection uses it");
                    }
                    self.current = Some(c);
                    self.warned = None;
                }
                Err(e) if self.current.is_some() => {
                    if self.warned.as_ref() != Some(&files) {
                        keep(&e);
                        self.warned = Some(files);
                    }
                }
                Err(e) => return Err(e),
            },
            Err(e) if self.current.is_some() => keep(&e),
            Err(e) => return Err(e),
        }
        self.current
            .as_ref()
            .ok_or_else(|| CredentialError::NoCertificate {
                path: self.cert.clone(),
            })
    }

    fn read_files(&self) -> Result<(Vec<u8>, Vec<u8>), CredentialError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|err| CredentialError::Read {
                path: p.to_owned(),
                err,
            })
        };
        Ok((read(&self.cert)?, read(&self.key)?))
    }
}

/// The roots the server is checked against: `ca` (PEM), or the system trust store
/// (rustls-native-certs: /etc/ssl/certs and friends, or SSL_CERT_FILE / SSL_CERT_DIR).
pub fn roots(ca: Option<&Path>) -> Result<RootCertStore, CredentialError> {
    let mut store = RootCertStore::empty();
    let certs: Vec<CertificateDer<'static>> = match ca {
        Some(p) => CertificateDer::pem_file_iter(p)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| CredentialError::Roots(format!("read CA file {}: {e}", p.display())))?,
        None => {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::debug!(error = %e, "cloud: a system trust store entry could not be read");
            }
            found.certs
        }
    };
    let (added, _ignored) = store.add_parsable_certificates(certs);
    if added == 0 {
        let from = ca
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "the system trust store".into());
        return Err(CredentialError::Roots(format!(
            "no usable CA certificate in {from}"
        )));
    }
    Ok(store)
}

/// A rustls client config: TLS 1.3 and 1.2, our pair as the client certificate. The flag
/// turns true once the server asks for the certificate: a handshake that then ends in a
/// bare close (no alert) is the server turning the certificate down.
pub fn client_config(
    creds: &Credentials,
    roots: RootCertStore,
) -> Result<(Arc<ClientConfig>, Arc<AtomicBool>), CredentialError> {
    let asked = Arc::new(AtomicBool::new(false));
    let resolver = Arc::new(Presenter {
        certified: creds.certified.clone(),
        asked: asked.clone(),
    });
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| CredentialError::Roots(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_cert_resolver(resolver);
    Ok((Arc::new(cfg), asked))
}

/// Hands our one pair to rustls and notes that the server asked for it.
#[derive(Debug)]
struct Presenter {
    certified: Arc<CertifiedKey>,
    asked: Arc<AtomicBool>,
}

impl rustls::client::ResolvesClientCert for Presenter {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.asked.store(true, Ordering::SeqCst);
        Some(self.certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// What a TLS-level failure says about us.
#[derive(Debug, PartialEq, Eq)]
pub enum TlsFault {
    /// The server turned our certificate down (an alert naming the certificate).
    Refused(String),
    /// The server's side: not trusted, wrong name, expired; or no common protocol.
    Other(String),
}

/// Classifies an I/O error from the TLS stream, if it carries a rustls error.
pub fn fault(err: &io::Error) -> Option<TlsFault> {
    let e = err.get_ref()?.downcast_ref::<rustls::Error>()?;
    Some(match e {
        rustls::Error::AlertReceived(a) if refusal(*a) => TlsFault::Refused(format!(
            "the server refused the client certificate (TLS alert {a:?})"
        )),
        rustls::Error::InvalidCertificate(c) => {
            TlsFault::Other(format!("the server's certificate is not acceptable: {c:?}"))
        }
        other => TlsFault::Other(other.to_string()),
    })
}

fn refusal(a: AlertDescription) -> bool {
    matches!(
        a,
        AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied
            | AlertDescription::CertificateRequired
    )
}
