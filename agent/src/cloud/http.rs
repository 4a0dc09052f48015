//! `run_command`: one HTTP request to a runtime's API on its internal address, `https`
//! without certificate checks on port 8443 (the runtime's self-signed API), `http`
//! otherwise; bounded in time (the older agent waits forever) and in size both ways
//! (a reply must fit in the server's `maxPayload`).

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::{Map, Value, json};
use tokio::net::TcpStream;

use super::RunCommand;

/// Request and response bodies above this are refused: the ack carries the body, and
/// python-socketio's default `maxPayload` is 1 MB.
pub const MAX_BODY: usize = 512 * 1024;

/// What went wrong, in words for the ack's `error`.
pub async fn run_command(
    ip: Ipv4Addr,
    cmd: &RunCommand,
    timeout: Duration,
) -> Result<Map<String, Value>, String> {
    let req = build(ip, cmd)?;
    match tokio::time::timeout(timeout, send(ip, cmd.port, req)).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "{} {} on {ip}:{}: no reply within {timeout:?} (--run-command-timeout)",
            cmd.method, cmd.api, cmd.port
        )),
    }
}

fn build(ip: Ipv4Addr, cmd: &RunCommand) -> Result<http::Request<Full<Bytes>>, String> {
    let mut path = if cmd.api.starts_with('/') {
        cmd.api.clone()
    } else {
        format!("/{}", cmd.api)
    };
    if let Some(params) = &cmd.params {
        let q: Vec<String> = params
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                format!("{}={}", encode(k), encode(&v))
            })
            .collect();
        if !q.is_empty() {
            path = format!(
                "{path}{}{}",
                if path.contains('?') { '&' } else { '?' },
                q.join("&")
            );
        }
    }
    let mut b = http::Request::builder()
        .method(cmd.method.as_str())
        .uri(path)
        .header(http::header::HOST, format!("{ip}:{}", cmd.port));
    let mut content_type = None;
    for (k, v) in &cmd.headers {
        if k.eq_ignore_ascii_case("content-type") {
            content_type = Some(v.clone());
        }
        b = b.header(k.as_str(), v.as_str());
    }
    let body: Vec<u8> = if !cmd.files.is_empty() {
        let (ct, body) = multipart(cmd)?;
        b = b.header(http::header::CONTENT_TYPE, ct);
        body
    } else {
        match &cmd.data {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) if content_type.is_some() => s.clone().into_bytes(),
            Some(v) => {
                if content_type.is_none() {
                    b = b.header(http::header::CONTENT_TYPE, "application/json");
                }
                v.to_string().into_bytes()
            }
        }
    };
    if body.len() > MAX_BODY {
        return Err(format!(
            "the request body is {} bytes, more than the {MAX_BODY} bytes a run_command may send",
            body.len()
        ));
    }
    b.body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("bad request: {e}"))
}

fn multipart(cmd: &RunCommand) -> Result<(String, Vec<u8>), String> {
    let boundary = format!("edgenet-{:016x}", fastrand::u64(..));
    let mut body = Vec::new();
    if let Some(Value::Object(fields)) = &cmd.data {
        for (k, v) in fields {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            body.extend(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
                )
                .as_bytes(),
            );
        }
    }
    for (field, f) in &cmd.files {
        let bytes = base64_decode(&f.content_base64)
            .ok_or_else(|| format!("file {field}: content_base64 is not base64"))?;
        body.extend(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{}\"\r\nContent-Type: {}\r\n\r\n",
                f.filename,
                f.content_type.as_deref().unwrap_or("application/octet-stream")
            )
            .as_bytes(),
        );
        body.extend(bytes);
        body.extend(b"\r\n");
    }
    body.extend(format!("--{boundary}--\r\n").as_bytes());
    Ok((format!("multipart/form-data; boundary={boundary}"), body))
}

async fn send(
    ip: Ipv4Addr,
    port: u16,
    req: http::Request<Full<Bytes>>,
) -> Result<Map<String, Value>, String> {
    let what = format!("{} {} on {ip}:{port}", req.method(), req.uri());
    let err = |e: String| format!("{what}: {e}");
    let tcp = TcpStream::connect((ip, port))
        .await
        .map_err(|e| err(e.to_string()))?;
    if port == 8443 {
        let tls = tokio_rustls::TlsConnector::from(no_verify())
            .connect(ServerName::IpAddress(ip.into()), tcp)
            .await
            .map_err(|e| err(format!("TLS: {e}")))?;
        exchange(hyper_util::rt::TokioIo::new(tls), req, &what).await
    } else {
        exchange(hyper_util::rt::TokioIo::new(tcp), req, &what).await
    }
}

async fn exchange<T>(
    io: T,
    req: http::Request<Full<Bytes>>,
    what: &str,
) -> Result<Map<String, Value>, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let err = |e: String| format!("{what}: {e}");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| err(e.to_string()))?;
    let driver = tokio::spawn(conn);
    let result = async {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| err(e.to_string()))?;
        let status = resp.status().as_u16();
        let headers: Map<String, Value> = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
            .collect();
        let content_type = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                    err(format!(
                        "the response body is more than the {MAX_BODY} bytes a run_command may return"
                    ))
                } else {
                    err(format!("read the response: {e}"))
                }
            })?
            .to_bytes();
        Ok(response(status, headers, content_type, &body))
    }
    .await;
    driver.abort();
    result
}

/// `http_response`: a JSON body when the content type is JSON or absent (and it parses),
/// else the text.
fn response(
    status: u16,
    headers: Map<String, Value>,
    content_type: Option<String>,
    body: &[u8],
) -> Map<String, Value> {
    let json_type = content_type
        .as_deref()
        .is_none_or(|c| c.to_ascii_lowercase().contains("json"));
    let body = json_type
        .then(|| serde_json::from_slice::<Value>(body).ok())
        .flatten()
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned().into());
    let mut m = Map::new();
    m.insert(
        "status".into(),
        if (200..400).contains(&status) {
            "success"
        } else {
            "error"
        }
        .into(),
    );
    m.insert(
        "http_response".into(),
        json!({
            "status_code": status,
            "headers": headers,
            "body": body,
            "ok": (200..400).contains(&status),
            "content_type": content_type,
        }),
    );
    m
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    };
    let clean: Vec<u8> = s
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= val(*c)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        match chunk.len() {
            4 => out.extend(&bytes[1..4]),
            3 => out.extend(&bytes[1..3]),
            2 => out.push(bytes[1]),
            _ => return None,
        }
    }
    Some(out)
}

/// The runtime's API certificate is self-signed: the older agent does not check it
/// either. The handshake signature is still verified (the peer holds its key).
fn no_verify() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    Arc::new(cfg)
}

#[derive(Debug)]
struct AnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end: &CertificateDer<'_>,
        _inter: &[CertificateDer<'_>],
        _name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_and_query() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGk").unwrap(), b"hi");
        assert!(base64_decode("a$b").is_none());
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn json_body_when_json_or_untyped() {
        let r = response(200, Map::new(), None, br#"{"a":1}"#);
        assert_eq!(r["http_response"]["body"]["a"], 1);
        let r = response(404, Map::new(), Some("text/plain".into()), b"{}");
        assert_eq!(r["http_response"]["body"], "{}");
        assert_eq!(r["status"], "error");
    }
}
