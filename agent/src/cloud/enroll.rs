//! Enrolment, what the field's installer does with curl and openssl: make a key and a CSR
//! (CN = the agent id, EKU clientAuth), post it as the multipart field `csr` to
//! `URL/orchestrators/enroll`, and store the certificate from `.data.certificate`.
//! Nothing is written unless the returned certificate parses, names our id and matches
//! our key; then key (0600) and certificate are each replaced atomically in a 0700 directory.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use super::tls;

/// The key to make.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KeyKind {
    /// RSA 2048 (what the field's installer makes).
    #[default]
    Rsa2048,
    /// ECDSA P-256.
    EcdsaP256,
}

#[derive(Clone, Debug)]
pub struct EnrollOptions {
    /// The cloud's base URL, `https://HOST[:PORT][/PREFIX]`.
    pub url: String,
    /// The agent id: the certificate's CN.
    pub id: String,
    /// Where `client.crt` and `client.key` go (the field's `~/.mtls`).
    pub dir: PathBuf,
    pub key_kind: KeyKind,
    /// CA bundle the enrolment server is checked against; `None`: the system trust store.
    pub ca: Option<PathBuf>,
    /// Bound on the whole exchange.
    pub timeout: Duration,
}

impl EnrollOptions {
    /// Defaults of the field: `~/.mtls`, RSA, system roots, 60 s.
    pub fn new(url: impl Into<String>, id: impl Into<String>) -> Self {
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/root"));
        EnrollOptions {
            url: url.into(),
            id: id.into(),
            dir: home.join(".mtls"),
            key_kind: KeyKind::default(),
            ca: None,
            timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnrollOutcome {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub agent_id: String,
    pub serial: String,
    pub not_after: SystemTime,
}

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("agent id {0:?}: want 1-64 characters of a-z, A-Z, 0-9, '-', '_', '.'")]
    BadId(String),
    #[error("enrolment URL {url:?}: {why} (want https://HOST[:PORT][/PREFIX])")]
    BadUrl { url: String, why: String },
    #[error("make the key or CSR: {0}")]
    Crypto(String),
    #[error("the enrolment server's trust roots: {0}")]
    Roots(String),
    #[error("reach {url}: {err}")]
    Connect { url: String, err: String },
    #[error("{url} refused the enrolment (HTTP {status}): {message}")]
    Refused {
        url: String,
        status: u16,
        message: String,
    },
    #[error("{url} answered without a certificate at .data.certificate: {why}")]
    BadReply { url: String, why: String },
    #[error("the certificate from {url} is not usable with our key: {why}")]
    BadCertificate { url: String, why: String },
    #[error("{path}: {why}; nothing was changed")]
    Unexpected { path: PathBuf, why: String },
    #[error("write {path}: {err}")]
    Write { path: PathBuf, err: std::io::Error },
    #[error("enrolment took longer than {0:?}")]
    Timeout(Duration),
}

/// Enrols: see the module comment. On any error nothing on disk has changed.
pub async fn enroll(opts: EnrollOptions) -> Result<EnrollOutcome, EnrollError> {
    let ok_id = (1..=64).contains(&opts.id.len())
        && opts
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !ok_id {
        return Err(EnrollError::BadId(opts.id.clone()));
    }
    let target = Target::parse(&opts.url)?;
    let (cert_path, key_path) = (opts.dir.join("client.crt"), opts.dir.join("client.key"));
    for p in [&opts.dir, &cert_path, &key_path] {
        check_path(p, p == &opts.dir)?;
    }
    let (key_pem, csr_pem) = make_key_and_csr(&opts.id, opts.key_kind)?;
    let roots = tls::roots(opts.ca.as_deref()).map_err(|e| EnrollError::Roots(e.to_string()))?;
    let cfg =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| EnrollError::Roots(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    let cert_pem = tokio::time::timeout(opts.timeout, post_csr(&target, Arc::new(cfg), &csr_pem))
        .await
        .map_err(|_| EnrollError::Timeout(opts.timeout))??;
    let bad = |why: String| EnrollError::BadCertificate {
        url: target.url.clone(),
        why,
    };
    let identity =
        tls::check_pair(cert_pem.as_bytes(), key_pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
    if identity.agent_id != opts.id {
        return Err(bad(format!(
            "it names {:?}, we asked for {:?}",
            identity.agent_id, opts.id
        )));
    }
    write_pair(
        &opts.dir,
        &key_path,
        key_pem.as_bytes(),
        &cert_path,
        cert_pem.as_bytes(),
    )?;
    tracing::info!(agent_id = %identity.agent_id, serial = %identity.serial, cert = %cert_path.display(), "enrolled");
    Ok(EnrollOutcome {
        cert: cert_path,
        key: key_path,
        agent_id: identity.agent_id,
        serial: identity.serial,
        not_after: identity.not_after,
    })
}

/// The key (PKCS#8 PEM) and CSR (PEM) for `id`.
fn make_key_and_csr(id: &str, kind: KeyKind) -> Result<(String, String), EnrollError> {
    let crypto = |e: &dyn std::fmt::Display| EnrollError::Crypto(e.to_string());
    let key = match kind {
        KeyKind::EcdsaP256 => {
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| crypto(&e))?
        }
        KeyKind::Rsa2048 => {
            use rsa::pkcs8::EncodePrivateKey;
            // ring signs with RSA but cannot make RSA keys: the rsa crate makes it.
            let k = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)
                .map_err(|e| crypto(&e))?;
            let der = k.to_pkcs8_der().map_err(|e| crypto(&e))?;
            let der = rustls_pki_types::PrivatePkcs8KeyDer::from(der.as_bytes().to_vec());
            rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_RSA_SHA256)
                .map_err(|e| crypto(&e))?
        }
    };
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| crypto(&e))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, id);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let csr = params.serialize_request(&key).map_err(|e| crypto(&e))?;
    Ok((key.serialize_pem(), csr.pem().map_err(|e| crypto(&e))?))
}

/// Where the CSR goes.
struct Target {
    url: String,
    host: String,
    port: u16,
    path: String,
}

impl Target {
    fn parse(url: &str) -> Result<Target, EnrollError> {
        let ep =
            super::Endpoint::parse_with(url, &["https"]).map_err(|why| EnrollError::BadUrl {
                url: url.to_owned(),
                why,
            })?;
        Ok(Target {
            url: format!("{}/orchestrators/enroll", url.trim_end_matches('/')),
            port: ep.port,
            path: format!("{}/orchestrators/enroll", ep.path),
            host: ep.host,
        })
    }
}

/// A path we would write must be a plain file or directory (or absent), never a link.
fn check_path(p: &Path, dir: bool) -> Result<(), EnrollError> {
    match fs::symlink_metadata(p) {
        Err(_) => Ok(()),
        Ok(m) if dir && m.is_dir() => Ok(()),
        Ok(m) if !dir && m.is_file() => Ok(()),
        Ok(_) => Err(EnrollError::Unexpected {
            path: p.to_owned(),
            why: format!(
                "holds something that is not a plain {}",
                if dir { "directory" } else { "file" }
            ),
        }),
    }
}

/// POSTs the CSR as multipart field `csr`; returns `.data.certificate`.
async fn post_csr(
    t: &Target,
    cfg: Arc<ClientConfig>,
    csr_pem: &str,
) -> Result<String, EnrollError> {
    let conn_err = |err: String| EnrollError::Connect {
        url: t.url.clone(),
        err,
    };
    let tcp = TcpStream::connect((t.host.as_str(), t.port))
        .await
        .map_err(|e| conn_err(e.to_string()))?;
    let name = ServerName::try_from(t.host.clone()).map_err(|e| conn_err(e.to_string()))?;
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .map_err(|e| conn_err(format!("TLS: {e}")))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| conn_err(e.to_string()))?;
    let driver = tokio::spawn(conn);
    let boundary = format!("edgenet-{:016x}", fastrand::u64(..));
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"csr\"; filename=\"client.csr\"\r\n\
         Content-Type: application/pkcs10\r\n\r\n{csr_pem}\r\n--{boundary}--\r\n"
    );
    let host_header = if t.port == 443 {
        t.host.clone()
    } else {
        format!("{}:{}", t.host, t.port)
    };
    let req = http::Request::post(t.path.as_str())
        .header(http::header::HOST, host_header)
        .header(
            http::header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={boundary}"),
        )
        .header(http::header::ACCEPT, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| conn_err(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| conn_err(e.to_string()));
    let result = match resp {
        Ok(r) => {
            let status = r.status();
            match r.into_body().collect().await {
                Ok(b) => read_reply(t, status.as_u16(), &b.to_bytes()),
                Err(e) => Err(conn_err(format!("read the reply: {e}"))),
            }
        }
        Err(e) => Err(e),
    };
    driver.abort();
    result
}

fn read_reply(t: &Target, status: u16, body: &[u8]) -> Result<String, EnrollError> {
    let v: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    if !(200..300).contains(&status) {
        let message = v
            .as_ref()
            .and_then(|v| v.get("error").or_else(|| v.get("message")))
            .map(|m| {
                m.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| m.to_string())
            })
            .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned());
        return Err(EnrollError::Refused {
            url: t.url.clone(),
            status,
            message,
        });
    }
    let bad = |why: &str| EnrollError::BadReply {
        url: t.url.clone(),
        why: why.to_owned(),
    };
    let v = v.ok_or_else(|| bad("the body is not JSON"))?;
    let cert = v
        .pointer("/data/certificate")
        .and_then(|c| c.as_str())
        .ok_or_else(|| bad("no such string"))?;
    Ok(cert.to_owned())
}

/// Creates `dir` 0700 (tightens it if it exists), writes both files to temp files first
/// (fsynced), then renames key (0600) and certificate into place and fsyncs the directory,
/// so a failure before the renames leaves the old pair untouched.
fn write_pair(
    dir: &Path,
    key: &Path,
    key_pem: &[u8],
    cert: &Path,
    cert_pem: &[u8],
) -> Result<(), EnrollError> {
    let werr = |path: &Path| {
        let path = path.to_owned();
        move |err| EnrollError::Write { path, err }
    };
    fs::create_dir_all(dir).map_err(werr(dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(werr(dir))?;
    let key_tmp = temp_file(dir, key, key_pem, 0o600).map_err(werr(key))?;
    let cert_tmp = match temp_file(dir, cert, cert_pem, 0o644) {
        Ok(t) => t,
        Err(e) => {
            let _ = fs::remove_file(&key_tmp);
            return Err(werr(cert)(e));
        }
    };
    let renamed = fs::rename(&key_tmp, key)
        .map_err(werr(key))
        .and_then(|()| fs::rename(&cert_tmp, cert).map_err(werr(cert)));
    for t in [&key_tmp, &cert_tmp] {
        let _ = fs::remove_file(t);
    }
    renamed?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(werr(dir))
}

/// `.NAME.tmp-PID` in `dir` with `bytes`, mode `mode`, fsynced.
fn temp_file(dir: &Path, path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<PathBuf> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let r = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    match r {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}
