//! A local image standing in for the runtime image (`REPO:TAG`, a repository of the
//! test's own), made from the test image with `docker commit` (no registry, no
//! builder). Its command serves `/www`:
//! - over HTTP on 8080 (busybox `httpd`);
//! - over HTTPS on 8443 with a self-signed certificate, as the field's runtime serves
//!   its API: Debian's `socat` (copied in with the libraries `ldd` lists) terminates
//!   TLS and hands each connection to `httpd -i`;
//! - and holds a silent listener on 8081 (accepts, never answers).
//!
//! `/www/x.json` is `{"ok":true}`; `/www/cgi-bin/echo` answers a POST with its body
//! (JSON), so a test sees what reached the runtime. Removed on drop.

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::{TempDir, sh, unique};

pub struct RuntimeImage {
    pub repo: String,
    pub tag: String,
}

const START: &str = r#"busybox httpd -p 8080 -h /www
(busybox sleep 2147483647 | busybox nc -l -p 8081 >/dev/null &)
/usr/bin/socat OPENSSL-LISTEN:8443,reuseaddr,fork,cert=/tls/cert.pem,key=/tls/key.pem,verify=0 EXEC:"/bin/busybox httpd -i -h /www" &
exec busybox sleep 2147483647
"#;

const ECHO_CGI: &str = "#!/bin/busybox sh
echo 'Content-Type: application/json'
echo
busybox head -c \"${CONTENT_LENGTH:-0}\"
";

impl RuntimeImage {
    pub fn new(tag: &str) -> Result<RuntimeImage> {
        let base = crate::docker::test_image();
        let repo = format!("edgenet-test/{}", unique("rtimg"));
        let tmp = unique("rtimgc");
        let dir = TempDir::new("rtimg");
        let root = dir.join("root");
        stage(&root)?;
        sh(&format!("docker create --name {tmp} {base} >/dev/null"))?;
        let made = sh(&format!(
            "docker cp {r}/. {tmp}:/ && docker commit --change 'CMD [\"/bin/busybox\",\"sh\",\"/start.sh\"]' --change 'LABEL edgenet.test=1' {tmp} {repo}:{tag} >/dev/null",
            r = root.display()
        ));
        let _ = sh(&format!("docker rm -f {tmp} >/dev/null 2>&1"));
        made?;
        Ok(RuntimeImage {
            repo,
            tag: tag.to_owned(),
        })
    }
}

/// The files the image adds to the test image, under `root`.
fn stage(root: &Path) -> Result<()> {
    let w = root.join("www");
    std::fs::create_dir_all(w.join("cgi-bin"))?;
    std::fs::write(w.join("x.json"), "{\"ok\":true}\n")?;
    let echo = w.join("cgi-bin/echo");
    std::fs::write(&echo, ECHO_CGI)?;
    std::fs::write(root.join("start.sh"), START)?;
    std::fs::create_dir_all(root.join("tls"))?;
    sh(&format!(
        "chmod 0755 {e} && openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=runtime \
         -keyout {t}/key.pem -out {t}/cert.pem 2>/dev/null",
        e = echo.display(),
        t = root.join("tls").display()
    ))
    .context("make the runtime's self-signed certificate (needs openssl: .ci/run installs it)")?;
    copy_with_libraries("/usr/bin/socat", root)
        .context("copy socat into the runtime image (apt-get install socat; .ci/run does)")
}

/// `bin` and every library `ldd` lists for it, each at its own path under `root`.
fn copy_with_libraries(bin: &str, root: &Path) -> Result<()> {
    if !Path::new(bin).exists() {
        bail!("{bin} is not installed");
    }
    let ldd = sh(&format!("ldd {bin}"))?;
    let libs = ldd.lines().filter_map(|l| {
        let path = l.split("=>").last()?.split_whitespace().next()?;
        path.starts_with('/').then_some(path)
    });
    for file in std::iter::once(bin).chain(libs) {
        let to = root.join(file.trim_start_matches('/'));
        if let Some(d) = to.parent() {
            std::fs::create_dir_all(d)?;
        }
        std::fs::copy(file, &to).with_context(|| format!("copy {file}"))?;
    }
    Ok(())
}

impl Drop for RuntimeImage {
    fn drop(&mut self) {
        let _ = sh(&format!(
            "docker rmi -f {}:{} >/dev/null 2>&1",
            self.repo, self.tag
        ));
    }
}
