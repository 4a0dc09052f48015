//! The link's certificates against a real python-socketio server with mutual TLS: each
//! way a pair can be wrong gives its own status, and a renewed pair on disk is used from
//! the next connection without a restart (a half-written one is not).

mod cloud_common;

use agent::cloud::{LinkStatus, WhyNot};
use cloud_common::{Link, blocking, config};
use e2e::cloud::{ClientOpts, CloudServer, Pki, ServerOpts, Signer};

/// Starts a link with `cert`/`key`/`ca` against `srv` and returns its first settled failure.
async fn first_failure(
    srv: &CloudServer,
    cert: &std::path::Path,
    key: &std::path::Path,
    ca: &std::path::Path,
) -> LinkStatus {
    let mut link = Link::start(config(&srv.url(), cert, key, ca));
    let st = link
        .wait(20, "a failure reported", |s| {
            !s.connected && s.why_not.is_some_and(|w| w != WhyNot::Connecting)
        })
        .await;
    assert_eq!(st.connects, 0, "{st:?}");
    link.shutdown().await;
    st
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_pair_has_its_own_status() {
    let pki = Pki::new().unwrap();
    let (good_c, good_k) = pki
        .client("good", "dev-a", 1, ClientOpts::default())
        .unwrap();
    let (_, other_k) = pki
        .client("other", "dev-b", 2, ClientOpts::default())
        .unwrap();
    let (old_c, old_k) = pki
        .client(
            "old",
            "dev-a",
            3,
            ClientOpts {
                expired: true,
                ..Default::default()
            },
        )
        .unwrap();
    let (str_c, str_k) = pki
        .client(
            "str",
            "dev-a",
            4,
            ClientOpts {
                signer: Signer::Stranger,
                ..Default::default()
            },
        )
        .unwrap();
    let stranger_ca = pki.dir.join("stranger.crt");

    for tls in ["1.3", "1.2"] {
        let srv = CloudServer::start(
            &pki,
            &ServerOpts {
                tls,
                ..Default::default()
            },
        )
        .unwrap();

        let st = first_failure(&srv, &good_c, &good_k, &stranger_ca).await;
        assert_eq!(
            st.why_not,
            Some(WhyNot::ServerNotTrusted),
            "wrong CA, TLS {tls}: {st:?}"
        );
        assert!(
            st.detail.as_deref().unwrap().contains("UnknownIssuer"),
            "{st:?}"
        );

        let st = first_failure(&srv, &old_c, &old_k, &pki.ca_cert).await;
        assert_eq!(
            st.why_not,
            Some(WhyNot::CertificateExpired),
            "expired, TLS {tls}: {st:?}"
        );
        assert!(
            st.detail
                .as_deref()
                .unwrap()
                .contains("expired on 2020-01-02"),
            "{st:?}"
        );

        let st = first_failure(&srv, &str_c, &str_k, &pki.ca_cert).await;
        assert_eq!(
            st.why_not,
            Some(WhyNot::CertificateRefused),
            "unknown client CA, TLS {tls}: {st:?}"
        );

        let st = first_failure(&srv, &good_c, &other_k, &pki.ca_cert).await;
        assert_eq!(st.why_not, Some(WhyNot::KeyMismatch), "TLS {tls}: {st:?}");
        assert!(
            st.detail.as_deref().unwrap().contains("does not match"),
            "{st:?}"
        );

        let missing = pki.dir.join("nope.crt");
        let st = first_failure(&srv, &missing, &good_k, &pki.ca_cert).await;
        assert_eq!(st.why_not, Some(WhyNot::CredentialsUnusable), "{st:?}");
        assert!(st.detail.as_deref().unwrap().contains("nope.crt"), "{st:?}");

        blocking(|| srv.refuse(Some("device not linked"))).unwrap();
        let st = first_failure(&srv, &good_c, &good_k, &pki.ca_cert).await;
        assert_eq!(
            st.why_not,
            Some(WhyNot::CertificateRefused),
            "44, TLS {tls}: {st:?}"
        );
        assert!(
            st.detail.as_deref().unwrap().contains("device not linked"),
            "{st:?}"
        );

        let state = blocking(|| srv.state()).unwrap();
        assert_eq!(
            state["clients"].as_array().unwrap().len(),
            0,
            "nobody got in: {state}"
        );
    }
    // A server whose certificate (from the trusted CA) is for another host name.
    let srv = CloudServer::start(
        &pki,
        &ServerOpts {
            wrong_name: true,
            ..Default::default()
        },
    )
    .unwrap();
    let st = first_failure(&srv, &good_c, &good_k, &pki.ca_cert).await;
    assert_eq!(st.why_not, Some(WhyNot::ServerNotTrusted), "{st:?}");
    assert!(
        st.detail.as_deref().unwrap().contains("NotValidForName"),
        "{st:?}"
    );
    drop(srv);

    // A server that is not there at all.
    let mut c = config("https://localhost:1", &good_c, &good_k, &pki.ca_cert);
    c.first_retry = std::time::Duration::from_secs(1);
    let mut link = Link::start(c);
    let st = link
        .wait(20, "unreachable", |s| {
            s.why_not == Some(WhyNot::ServerUnreachable)
        })
        .await;
    assert!(
        st.detail.as_deref().unwrap().contains("connect to"),
        "{st:?}"
    );
    link.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_pair_is_used_on_the_next_connection() {
    let pki = Pki::new().unwrap();
    let (c1, k1) = pki
        .client(
            "v1",
            "dev-n",
            0x10,
            ClientOpts {
                pkcs1: true,
                ..Default::default()
            },
        )
        .unwrap();
    let (c2, k2) = pki
        .client("v2", "dev-n", 0x11, ClientOpts::default())
        .unwrap();
    let live = pki.dir.join("mtls");
    std::fs::create_dir_all(&live).unwrap();
    let (cert, key) = (live.join("client.crt"), live.join("client.key"));
    std::fs::copy(&c1, &cert).unwrap();
    std::fs::copy(&k1, &key).unwrap();
    let srv = CloudServer::start(&pki, &ServerOpts::default()).unwrap();
    let mut link = Link::start(config(&srv.url(), &cert, &key, &pki.ca_cert));
    let st = link.connected(20).await;
    assert_eq!(st.certificate_serial.as_deref(), Some("10"));

    // Half written: the new certificate with the old key. Ignored; the old pair goes on.
    std::fs::copy(&c2, &cert).unwrap();
    blocking(|| srv.disconnect()).unwrap();
    let st = link
        .wait(20, "reconnected with the old pair", |s| {
            s.connected && s.connects == 2
        })
        .await;
    assert_eq!(st.certificate_serial.as_deref(), Some("10"));

    // Both files written: the next connection uses the new pair.
    std::fs::copy(&k2, &key).unwrap();
    blocking(|| srv.disconnect()).unwrap();
    let st = link
        .wait(20, "reconnected with the new pair", |s| {
            s.connected && s.connects == 3
        })
        .await;
    assert_eq!(st.certificate_serial.as_deref(), Some("11"));

    let state = blocking(|| srv.state()).unwrap();
    let serials: Vec<_> = state["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["serial"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(serials, ["10", "10", "11"], "what the server saw");
    link.shutdown().await;
}
