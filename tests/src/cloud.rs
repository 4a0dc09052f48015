//! The cloud stand-in: a real python-socketio server with mutual TLS (tests/cloud/server.py,
//! in the venv `.ci/run` makes), certificates made with the `openssl` command line, and a
//! small client for the server's loopback control endpoint.
//!
//! A test that cannot find the venv or openssl FAILS, saying how to get them.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::sh;

pub use crate::runtime_image::RuntimeImage;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The venv's python: `$EDGENET_CLOUD_PYTHON`, else `target/cloud-venv/bin/python`.
pub fn python() -> PathBuf {
    let p = std::env::var_os("EDGENET_CLOUD_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/cloud-venv/bin/python"));
    let ok = Command::new(&p)
        .args(["-c", "import socketio, aiohttp"])
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "no python with python-socketio and aiohttp at {} (set EDGENET_CLOUD_PYTHON, or make it as .ci/run does: \
         python3 -m venv target/cloud-venv && target/cloud-venv/bin/pip install python-socketio aiohttp)",
        p.display()
    );
    p
}

/// The fields every heartbeat's data carries (CONTROL-PLANE.md), besides
/// `agent_id` and `status`.
pub const HEARTBEAT_FIELDS: &[&str] = &[
    "cpu_usage",
    "memory_usage",
    "memory_total",
    "disk_usage",
    "disk_total",
    "uptime",
    "timestamp",
];

/// Who signs a client certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signer {
    /// The CA the server trusts for clients.
    Ca,
    /// A CA the server does not know.
    Stranger,
}

#[derive(Clone, Copy, Debug)]
pub struct ClientOpts {
    pub signer: Signer,
    /// `BEGIN RSA PRIVATE KEY` instead of PKCS#8.
    pub pkcs1: bool,
    /// Valid 2020-01-01 to 2020-01-02.
    pub expired: bool,
    /// An EC P-256 key instead of RSA 2048.
    pub ec: bool,
}

impl Default for ClientOpts {
    fn default() -> Self {
        ClientOpts {
            signer: Signer::Ca,
            pkcs1: false,
            expired: false,
            ec: false,
        }
    }
}

/// A throw-away PKI in a temp dir: CA, stranger CA, server certificate for localhost.
pub struct Pki {
    pub dir: PathBuf,
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

fn q(p: &Path) -> String {
    format!("'{}'", p.display())
}

impl Pki {
    pub fn new() -> Result<Pki> {
        sh("openssl version")
            .context("these tests need the openssl command line: apt-get install openssl")?;
        let dir = std::env::temp_dir().join(crate::unique("pki"));
        std::fs::create_dir_all(&dir)?;
        for ca in ["ca", "stranger"] {
            sh(&format!(
                "cd {d} && openssl req -x509 -newkey rsa:2048 -nodes -keyout {ca}.key -out {ca}.crt -days 30 \
                 -subj /CN=test-{ca} -addext basicConstraints=critical,CA:TRUE -addext keyUsage=keyCertSign,cRLSign 2>&1",
                d = q(&dir)
            ))?;
        }
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )?;
        std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n")?;
        std::fs::write(
            dir.join("elsewhere.ext"),
            "subjectAltName=DNS:elsewhere.example\nextendedKeyUsage=serverAuth\n",
        )?;
        for (name, cn) in [("server", "localhost"), ("elsewhere", "elsewhere.example")] {
            sh(&format!(
                "cd {d} && openssl req -new -newkey rsa:2048 -nodes -keyout {name}.key -out {name}.csr -subj /CN={cn} 2>&1 && \
                 openssl x509 -req -in {name}.csr -CA ca.crt -CAkey ca.key -set_serial 1 -days 30 -extfile {name}.ext -out {name}.crt 2>&1",
                d = q(&dir)
            ))?;
        }
        Ok(Pki {
            ca_cert: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            dir,
        })
    }

    /// A server pair for DNS name `name` (SAN and CN), signed by the CA the agent is
    /// given: `server-NAME.crt` / `.key`.
    pub fn server_for(&self, name: &str) -> Result<(PathBuf, PathBuf)> {
        let f = format!("server-{name}");
        std::fs::write(
            self.dir.join(format!("{f}.ext")),
            format!("subjectAltName=DNS:{name}\nextendedKeyUsage=serverAuth\n"),
        )?;
        sh(&format!(
            "cd {d} && openssl req -new -newkey rsa:2048 -nodes -keyout {f}.key -out {f}.csr -subj /CN={name} 2>&1 && \
             openssl x509 -req -in {f}.csr -CA ca.crt -CAkey ca.key -set_serial 2 -days 30 -extfile {f}.ext -out {f}.crt 2>&1",
            d = q(&self.dir)
        ))?;
        Ok((
            self.dir.join(format!("{f}.crt")),
            self.dir.join(format!("{f}.key")),
        ))
    }

    /// A client pair `NAME.crt` / `NAME.key` with subject CN `cn` and serial `serial`.
    pub fn client(
        &self,
        name: &str,
        cn: &str,
        serial: u32,
        o: ClientOpts,
    ) -> Result<(PathBuf, PathBuf)> {
        let d = q(&self.dir);
        let keygen = if o.ec {
            "-newkey ec -pkeyopt ec_paramgen_curve:P-256"
        } else {
            "-newkey rsa:2048"
        };
        sh(&format!(
            "cd {d} && openssl req -new {keygen} -nodes -keyout {name}.key -out {name}.csr -subj /CN={cn} 2>&1"
        ))?;
        let ca = match o.signer {
            Signer::Ca => "ca",
            Signer::Stranger => "stranger",
        };
        if o.expired {
            let cnf = format!(
                "[ca]\ndefault_ca=d\n[d]\ndir={dir}\ndatabase=$dir/{name}.index\nnew_certs_dir=$dir\nserial=$dir/{name}.serial\n\
                 default_md=sha256\npolicy=p\nunique_subject=no\nx509_extensions=e\n[p]\ncommonName=supplied\n[e]\nextendedKeyUsage=clientAuth\n",
                dir = self.dir.display()
            );
            std::fs::write(self.dir.join(format!("{name}.cnf")), cnf)?;
            std::fs::write(self.dir.join(format!("{name}.index")), "")?;
            std::fs::write(
                self.dir.join(format!("{name}.serial")),
                format!("{serial:04X}\n"),
            )?;
            sh(&format!(
                "cd {d} && openssl ca -batch -config {name}.cnf -cert {ca}.crt -keyfile {ca}.key -in {name}.csr -out {name}.crt \
                 -startdate 20200101000000Z -enddate 20200102000000Z -notext 2>&1"
            ))?;
        } else {
            sh(&format!(
                "cd {d} && openssl x509 -req -in {name}.csr -CA {ca}.crt -CAkey {ca}.key -set_serial {serial} -days 30 \
                 -extfile client.ext -out {name}.crt 2>&1"
            ))?;
        }
        if o.pkcs1 {
            sh(&format!(
                "cd {d} && openssl rsa -in {name}.key -traditional -out {name}.key 2>&1"
            ))?;
        }
        Ok((
            self.dir.join(format!("{name}.crt")),
            self.dir.join(format!("{name}.key")),
        ))
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How the server runs.
#[derive(Clone, Debug)]
pub struct ServerOpts {
    /// "1.2", "1.3" or "any".
    pub tls: &'static str,
    pub ping_interval: f64,
    pub ping_timeout: f64,
    pub max_payload: u64,
    /// Signs enrolment CSRs when set (cert, key).
    pub signer: Option<(PathBuf, PathBuf)>,
    /// Enrolment answers HTTP 400 with this error when set.
    pub enroll_fail: Option<String>,
    /// No client certificate asked for (the enrolment endpoint).
    pub no_client_cert: bool,
    /// Serve a certificate (from the same CA) for `elsewhere.example`, not localhost.
    pub wrong_name: bool,
    /// Serve this pair instead (e.g. from [`Pki::server_for`]).
    pub pair: Option<(PathBuf, PathBuf)>,
    /// The address the Socket.IO site binds (default 127.0.0.1).
    pub host: Option<String>,
}

impl Default for ServerOpts {
    fn default() -> Self {
        ServerOpts {
            tls: "any",
            ping_interval: 25.0,
            ping_timeout: 20.0,
            max_payload: 1_000_000,
            signer: None,
            enroll_fail: None,
            no_client_cert: false,
            wrong_name: false,
            pair: None,
            host: None,
        }
    }
}

/// A running python-socketio server; killed on drop.
pub struct CloudServer {
    child: Option<Child>,
    pub port: u16,
    pub control: u16,
    args: Vec<String>,
}

impl CloudServer {
    pub fn start(pki: &Pki, o: &ServerOpts) -> Result<CloudServer> {
        let (cert, key) = if let Some(pair) = &o.pair {
            pair.clone()
        } else if o.wrong_name {
            (pki.dir.join("elsewhere.crt"), pki.dir.join("elsewhere.key"))
        } else {
            (pki.server_cert.clone(), pki.server_key.clone())
        };
        let mut args = vec![
            workspace()
                .join("tests/cloud/server.py")
                .display()
                .to_string(),
            "--cert".into(),
            cert.display().to_string(),
            "--key".into(),
            key.display().to_string(),
            "--client-ca".into(),
            pki.ca_cert.display().to_string(),
            "--tls".into(),
            o.tls.into(),
            "--ping-interval".into(),
            o.ping_interval.to_string(),
            "--ping-timeout".into(),
            o.ping_timeout.to_string(),
            "--max-payload".into(),
            o.max_payload.to_string(),
        ];
        if let Some((c, k)) = &o.signer {
            args.extend([
                "--signer-cert".into(),
                c.display().to_string(),
                "--signer-key".into(),
                k.display().to_string(),
            ]);
        }
        if o.no_client_cert {
            args.push("--no-client-cert".into());
        }
        if let Some(h) = &o.host {
            args.extend(["--host".into(), h.clone()]);
        }
        if let Some(e) = &o.enroll_fail {
            args.extend(["--enroll-fail".into(), e.clone()]);
        }
        let mut s = CloudServer {
            child: None,
            port: 0,
            control: 0,
            args,
        };
        s.spawn(0)?;
        Ok(s)
    }

    fn spawn(&mut self, port: u16) -> Result<()> {
        let mut child = Command::new(python())
            .args(&self.args)
            .args(["--port", &port.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start tests/cloud/server.py")?;
        let out = child.stdout.take().context("server stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(out).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
        let Some(ready) = line.strip_prefix("READY ") else {
            let _ = child.kill();
            bail!("the cloud server did not start (said {line:?}); see its stderr above");
        };
        let v: Value = serde_json::from_str(ready.trim())?;
        self.port = v["port"].as_u64().context("port")? as u16;
        self.control = v["control"].as_u64().context("control")? as u16;
        self.child = Some(child);
        Ok(())
    }

    /// `https://localhost:PORT`: the host name is checked against the server certificate.
    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the server and starts it again on the same port (state is lost).
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn(self.port)
    }

    /// SIGSTOP / SIGCONT: the connection stays open but the server goes silent.
    pub fn pause(&self, on: bool) {
        if let Some(c) = &self.child {
            let sig = if on { libc::SIGSTOP } else { libc::SIGCONT };
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    fn call(&self, method: &str, path: &str, body: &Value) -> Result<Value> {
        let mut s =
            TcpStream::connect(("127.0.0.1", self.control)).context("cloud server control port")?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        let b = body.to_string();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
            b.len()
        )?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        let (head, body) = resp
            .split_once("\r\n\r\n")
            .context("HTTP response without a body")?;
        if !head.starts_with("HTTP/1.1 200") {
            bail!("control {path}: {head} {body}");
        }
        Ok(serde_json::from_str(body)?)
    }

    /// `{"clients": [...], "heartbeats": [...], "events": [...]}`.
    pub fn state(&self) -> Result<Value> {
        self.call("GET", "/state", &Value::Null)
    }

    /// Emits `event` with `data` to the newest client and waits for its ack:
    /// `{"ack": ...}` or `{"timeout": true}`.
    pub fn emit(&self, event: &str, data: Value, timeout_s: f64) -> Result<Value> {
        self.call(
            "POST",
            "/emit",
            &serde_json::json!({"event": event, "data": data, "timeout": timeout_s}),
        )
    }

    /// Sends the raw Engine.IO packet `text` followed by `pad` letters `a` as one frame.
    pub fn raw(&self, text: &str, pad: usize) -> Result<()> {
        self.call(
            "POST",
            "/raw",
            &serde_json::json!({"text": text, "pad": pad}),
        )
        .map(drop)
    }

    /// Makes the Socket.IO connect handler refuse (`44{"message"}`) or accept again.
    pub fn refuse(&self, message: Option<&str>) -> Result<()> {
        self.call("POST", "/refuse", &serde_json::json!({"message": message}))
            .map(drop)
    }

    pub fn disconnect(&self) -> Result<()> {
        self.call("POST", "/disconnect", &serde_json::json!({}))
            .map(drop)
    }
}

impl Drop for CloudServer {
    fn drop(&mut self) {
        self.pause(false);
        self.stop();
    }
}
