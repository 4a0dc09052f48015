//! `agent enroll` against a local stand-in (aiohttp over TLS on loopback, signing with
//! the openssl command line): key and CSR made in-process, the certificate stored with
//! tight modes, nothing written on failure, and the enrolled pair then gets the link up.

mod cloud_common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use agent::cloud::enroll::{EnrollError, EnrollOptions, KeyKind, enroll};
use cloud_common::{Link, blocking, config};
use e2e::cloud::{CloudServer, Pki, ServerOpts};

fn enroll_server(pki: &Pki, fail: Option<&str>) -> CloudServer {
    let o = ServerOpts {
        signer: Some((pki.ca_cert.clone(), pki.dir.join("ca.key"))),
        enroll_fail: fail.map(str::to_owned),
        no_client_cert: true,
        ..Default::default()
    };
    CloudServer::start(pki, &o).unwrap()
}

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn opts(
    srv: &CloudServer,
    pki: &Pki,
    id: &str,
    dir: &std::path::Path,
    kind: KeyKind,
) -> EnrollOptions {
    let mut o = EnrollOptions::new(srv.url(), id);
    o.dir = dir.to_owned();
    o.ca = Some(pki.ca_cert.clone());
    o.key_kind = kind;
    o.timeout = Duration::from_secs(60);
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrols_then_the_link_comes_up_with_the_new_pair() {
    let pki = Pki::new().unwrap();
    let srv = enroll_server(&pki, None);
    for (kind, id, key_header) in [
        (KeyKind::Rsa2048, "07048933", "-----BEGIN PRIVATE KEY-----"),
        (
            KeyKind::EcdsaP256,
            "ec-device.1",
            "-----BEGIN PRIVATE KEY-----",
        ),
    ] {
        let dir = pki.dir.join(format!("home-{id}/.mtls"));
        let out = enroll(opts(&srv, &pki, id, &dir, kind)).await.unwrap();
        assert_eq!(out.agent_id, id);
        assert_eq!(
            (out.cert.clone(), out.key.clone()),
            (dir.join("client.crt"), dir.join("client.key"))
        );
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&out.key), 0o600);
        assert!(
            std::fs::read_to_string(&out.key)
                .unwrap()
                .starts_with(key_header)
        );
        let subject = e2e::sh(&format!(
            "openssl x509 -in '{}' -noout -subject -ext extendedKeyUsage",
            out.cert.display()
        ))
        .unwrap();
        assert!(subject.contains(&format!("CN = {id}")), "{subject}");
        assert!(
            subject.contains("TLS Web Client Authentication"),
            "{subject}"
        );
        assert!(out.not_after > std::time::SystemTime::now());
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 2, "no temp files left: {leftovers:?}");
    }
    let state = blocking(|| srv.state()).unwrap();
    let csr = state["events"][0]["data"].as_str().unwrap();
    assert!(
        csr.contains("CN = 07048933") && csr.contains("TLS Web Client Authentication"),
        "the CSR as the server read it: {csr}"
    );

    // The enrolled pair is what the link uses against a server that requires it.
    let dir = pki.dir.join("home-07048933/.mtls");
    let cloud = CloudServer::start(&pki, &ServerOpts::default()).unwrap();
    let mut link = Link::start(config(
        &cloud.url(),
        &dir.join("client.crt"),
        &dir.join("client.key"),
        &pki.ca_cert,
    ));
    let st = link.connected(20).await;
    assert_eq!(st.agent_id.as_deref(), Some("07048933"));
    link.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_written_on_failure() {
    let pki = Pki::new().unwrap();
    let srv = enroll_server(&pki, Some("unknown orchestrator id"));
    let dir = pki.dir.join("fresh/.mtls");
    let e = enroll(opts(&srv, &pki, "dev-x", &dir, KeyKind::EcdsaP256))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, EnrollError::Refused { status: 400, message, .. } if message == "unknown orchestrator id"),
        "{e}"
    );
    assert!(!dir.exists(), "no directory made on failure");

    // An existing pair is left exactly as it was.
    let kept = pki.dir.join("kept");
    std::fs::create_dir_all(&kept).unwrap();
    std::fs::write(kept.join("client.crt"), "old cert").unwrap();
    std::fs::write(kept.join("client.key"), "old key").unwrap();
    let e = enroll(opts(&srv, &pki, "dev-x", &kept, KeyKind::EcdsaP256))
        .await
        .unwrap_err();
    assert!(matches!(e, EnrollError::Refused { .. }), "{e}");
    assert_eq!(
        std::fs::read_to_string(kept.join("client.key")).unwrap(),
        "old key"
    );
    assert_eq!(
        std::fs::read_to_string(kept.join("client.crt")).unwrap(),
        "old cert"
    );

    let e = enroll(opts(&srv, &pki, "bad id/..", &dir, KeyKind::EcdsaP256))
        .await
        .unwrap_err();
    assert!(matches!(e, EnrollError::BadId(_)), "{e}");
    let mut o = opts(&srv, &pki, "dev-x", &dir, KeyKind::EcdsaP256);
    o.url = "https://localhost:1".into();
    let e = enroll(o).await.unwrap_err();
    assert!(matches!(e, EnrollError::Connect { .. }), "{e}");
    let mut o = opts(&srv, &pki, "dev-x", &dir, KeyKind::EcdsaP256);
    o.ca = Some(pki.dir.join("stranger.crt"));
    let e = enroll(o).await.unwrap_err();
    assert!(
        e.to_string().contains("TLS"),
        "an untrusted enrolment server is refused: {e}"
    );
    let mut o = opts(&srv, &pki, "dev-x", &dir, KeyKind::EcdsaP256);
    o.url = "http://localhost:80".into();
    assert!(matches!(
        enroll(o).await.unwrap_err(),
        EnrollError::BadUrl { .. }
    ));
    assert!(!dir.exists());

    // A path holding something unexpected is refused, not replaced.
    let odd = pki.dir.join("odd");
    std::fs::create_dir_all(odd.join("client.key")).unwrap();
    let good = enroll_server(&pki, None);
    let e = enroll(opts(&good, &pki, "dev-x", &odd, KeyKind::EcdsaP256))
        .await
        .unwrap_err();
    assert!(matches!(e, EnrollError::Unexpected { .. }), "{e}");
    assert!(!odd.join("client.crt").exists());
}

/// The `agent enroll` subcommand itself (the binary), ECDSA, into a fresh directory.
#[test]
fn the_enroll_subcommand_stores_the_pair() {
    let pki = Pki::new().unwrap();
    let srv = enroll_server(&pki, None);
    let dir = pki.dir.join("cli-mtls");
    let out = std::process::Command::new(e2e::bin("agent"))
        .args(["enroll", "--url", &srv.url(), "--id", "cli-0001", "--ecdsa"])
        .arg("--dir")
        .arg(&dir)
        .arg("--ca")
        .arg(&pki.ca_cert)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("enrolled as cli-0001"), "{said}");
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("client.key")), 0o600);
    let pem = std::fs::read_to_string(dir.join("client.key")).unwrap();
    assert!(pem.contains("PRIVATE KEY"), "{pem}");
    assert!(dir.join("client.crt").exists());

    // A refused enrolment: exit 1 with the server's reason, nothing written.
    let srv = enroll_server(&pki, Some("unknown device"));
    let dir2 = pki.dir.join("cli-mtls2");
    let out = std::process::Command::new(e2e::bin("agent"))
        .args(["enroll", "--url", &srv.url(), "--id", "cli-0002"])
        .arg("--dir")
        .arg(&dir2)
        .arg("--ca")
        .arg(&pki.ca_cert)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown device"), "{err}");
    assert!(!dir2.join("client.key").exists() && !dir2.join("client.crt").exists());
}
