//! The server against the real kernel: real files, sockets and permissions in a
//! temporary directory.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;

use super::*;

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!(
            "ipc-srv-{tag}-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir(&p).expect("create the test directory");
        Dir(p)
    }
    fn sock(&self) -> PathBuf {
        self.0.join("s.sock")
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A handler that answers every line with the peer's uid, until EOF, an error or
/// shutdown; what ended it is sent on `ended`.
fn echo_uid(
    shutdown: CancellationToken,
    ended: tokio::sync::mpsc::UnboundedSender<String>,
) -> impl Fn(Stream, PeerCred) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
    move |stream, peer| {
        let (shutdown, ended) = (shutdown.clone(), ended.clone());
        Box::pin(async move {
            let (r, mut w) = stream.into_split();
            let mut lines = BufReader::new(r).lines();
            let why = loop {
                let line = tokio::select! {
                    _ = shutdown.cancelled() => break "shutdown".to_string(),
                    l = lines.next_line() => l,
                };
                match line {
                    Ok(Some(_)) => {
                        let _ = w
                            .write_all(format!("uid {} pid {:?}\n", peer.uid, peer.pid).as_bytes())
                            .await;
                    }
                    Ok(None) => break "eof".to_string(),
                    Err(e) => break format!("{:?}: {e}", e.kind()),
                }
            };
            let _ = ended.send(why);
        })
    }
}

type Ended = tokio::sync::mpsc::UnboundedReceiver<String>;

fn start(cfg: &ServerConfig) -> (CancellationToken, tokio::task::JoinHandle<()>, Ended) {
    let server = Server::bind(cfg).expect("bind");
    let shutdown = CancellationToken::new();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(server.serve(echo_uid(shutdown.clone(), tx), shutdown.clone()));
    (shutdown, task, rx)
}

async fn ask(c: &mut UnixStream) -> String {
    c.write_all(b"hello\n").await.expect("write");
    let mut buf = vec![0; 256];
    let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
        .await
        .expect("an answer in time")
        .expect("read");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn regular_file_is_refused_and_left_byte_identical() {
    let d = Dir::new("file");
    let content = b"{\"runtimes\": [\"precious\"]}\n\x00\xff";
    std::fs::write(d.sock(), content).unwrap();
    let err = Server::bind(&ServerConfig::new(d.sock())).unwrap_err();
    assert!(matches!(err, ServerError::NotASocket { .. }), "{err}");
    assert!(
        err.to_string().contains(&d.sock().display().to_string()),
        "{err}"
    );
    assert_eq!(std::fs::read(d.sock()).unwrap(), content);
    // No temporary socket left behind either.
    assert_eq!(std::fs::read_dir(&d.0).unwrap().count(), 1);
}

#[tokio::test]
async fn symlink_and_directory_are_refused_and_left_alone() {
    let d = Dir::new("link");
    let target = d.0.join("target");
    std::fs::write(&target, b"keep").unwrap();
    std::os::unix::fs::symlink(&target, d.sock()).unwrap();
    let err = Server::bind(&ServerConfig::new(d.sock())).unwrap_err();
    assert!(matches!(err, ServerError::NotASocket { .. }), "{err}");
    assert!(
        err.to_string().contains(&d.sock().display().to_string()),
        "{err}"
    );
    assert_eq!(std::fs::read_link(d.sock()).unwrap(), target);
    assert_eq!(std::fs::read(&target).unwrap(), b"keep");

    let d = Dir::new("dir");
    std::fs::create_dir(d.sock()).unwrap();
    std::fs::write(d.sock().join("inside"), b"x").unwrap();
    let err = Server::bind(&ServerConfig::new(d.sock())).unwrap_err();
    assert!(matches!(err, ServerError::NotASocket { .. }), "{err}");
    assert_eq!(std::fs::read(d.sock().join("inside")).unwrap(), b"x");
}

#[tokio::test]
async fn live_socket_is_never_taken_over() {
    let d = Dir::new("live");
    let (shutdown, task, _ended) = start(&ServerConfig::new(d.sock()));
    let ino = std::fs::metadata(d.sock()).unwrap().ino();
    let err = Server::bind(&ServerConfig::new(d.sock())).unwrap_err();
    assert!(matches!(err, ServerError::InUse(_)), "{err}");
    assert!(
        err.to_string().contains("another process is listening on"),
        "{err}"
    );
    assert_eq!(std::fs::metadata(d.sock()).unwrap().ino(), ino);
    // The first server still serves.
    let mut c = UnixStream::connect(d.sock()).await.unwrap();
    assert!(ask(&mut c).await.starts_with("uid "));
    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn stale_socket_is_replaced_and_removed_on_exit() {
    let d = Dir::new("stale");
    drop(std::os::unix::net::UnixListener::bind(d.sock()).unwrap());
    assert!(d.sock().exists(), "a dropped listener leaves its file");
    let (shutdown, task, _ended) = start(&ServerConfig::new(d.sock()));
    let mut c = UnixStream::connect(d.sock()).await.unwrap();
    assert!(ask(&mut c).await.starts_with("uid "));
    shutdown.cancel();
    task.await.unwrap();
    assert!(!d.sock().exists(), "our socket is removed on exit");
}

#[tokio::test]
async fn missing_directory_is_a_clear_error() {
    let d = Dir::new("nodir");
    let err = Server::bind(&ServerConfig::new(d.0.join("no/such/s.sock"))).unwrap_err();
    assert!(matches!(err, ServerError::NoDir(_)), "{err}");
    assert!(err.to_string().contains("does not exist"), "{err}");
}

#[tokio::test]
async fn a_replaced_socket_file_is_left_alone_on_exit() {
    let d = Dir::new("ours");
    let (shutdown, task, _ended) = start(&ServerConfig::new(d.sock()));
    // A successor put its own file in place (rename over ours, as bind does).
    let other = d.0.join("other");
    std::fs::write(&other, b"successor").unwrap();
    std::fs::rename(&other, d.sock()).unwrap();
    shutdown.cancel();
    task.await.unwrap();
    assert_eq!(std::fs::read(d.sock()).unwrap(), b"successor");
}

#[tokio::test]
async fn mode_and_group_are_set() {
    let d = Dir::new("mode");
    // Root may give the socket any group; others only their own.
    let gid = if nix::unistd::geteuid().is_root() {
        nix::unistd::Gid::from_raw(1)
    } else {
        nix::unistd::getegid()
    };
    let group = nix::unistd::Group::from_gid(gid)
        .unwrap()
        .expect("a named group for the test")
        .name;
    let mut cfg = ServerConfig::new(d.sock());
    cfg.mode = 0o640;
    cfg.group = Some(group);
    let (shutdown, task, _ended) = start(&cfg);
    let md = std::fs::metadata(d.sock()).unwrap();
    assert_eq!(md.permissions().mode() & 0o777, 0o640);
    assert_eq!(md.gid(), gid.as_raw());
    // Only the socket is in the directory: the temporary name was renamed away.
    assert_eq!(std::fs::read_dir(&d.0).unwrap().count(), 1);
    shutdown.cancel();
    task.await.unwrap();

    cfg.group = Some("no-such-group-ipc".into());
    let err = Server::bind(&cfg).unwrap_err();
    assert!(matches!(err, ServerError::UnknownGroup(_)), "{err}");
}

#[tokio::test]
async fn the_client_over_the_cap_is_told_busy() {
    let d = Dir::new("cap");
    let mut cfg = ServerConfig::new(d.sock());
    cfg.max_clients = 2;
    let (shutdown, task, mut ended) = start(&cfg);
    let mut a = UnixStream::connect(d.sock()).await.unwrap();
    let mut b = UnixStream::connect(d.sock()).await.unwrap();
    // Both are being served (their handlers answer).
    assert!(ask(&mut a).await.starts_with("uid "));
    assert!(ask(&mut b).await.starts_with("uid "));
    let c = UnixStream::connect(d.sock()).await.unwrap();
    let mut all = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        BufReader::new(c).read_to_string(&mut all),
    )
    .await
    .expect("the refusal in time")
    .expect("read the refusal");
    assert_eq!(
        all,
        "{\"success\":false,\"error\":\"busy: 2 clients connected (the limit); try again\"}\n"
    );
    // A freed slot serves the next client.
    drop(a);
    assert_eq!(ended.recv().await.as_deref(), Some("eof"));
    let mut c = UnixStream::connect(d.sock()).await.unwrap();
    assert!(ask(&mut c).await.starts_with("uid "));
    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn idle_clients_are_closed_and_active_ones_kept() {
    let d = Dir::new("idle");
    let mut cfg = ServerConfig::new(d.sock());
    cfg.idle_timeout = Some(Duration::from_millis(300));
    let (shutdown, task, mut ended) = start(&cfg);
    let mut busy = UnixStream::connect(d.sock()).await.unwrap();
    let mut idle = UnixStream::connect(d.sock()).await.unwrap();
    // Requests every 100 ms keep a client open well past the timeout.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(ask(&mut busy).await.starts_with("uid "));
    }
    let why = tokio::time::timeout(Duration::from_secs(10), ended.recv())
        .await
        .expect("the idle client is closed")
        .unwrap();
    assert!(why.starts_with("TimedOut"), "{why}");
    let mut buf = [0u8; 16];
    assert_eq!(
        idle.read(&mut buf).await.unwrap(),
        0,
        "the idle client sees EOF"
    );
    assert!(ask(&mut busy).await.starts_with("uid "));
    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn peer_credentials_reach_the_handler() {
    let d = Dir::new("cred");
    let (shutdown, task, _ended) = start(&ServerConfig::new(d.sock()));
    let mut c = UnixStream::connect(d.sock()).await.unwrap();
    let want = format!(
        "uid {} pid Some({})\n",
        nix::unistd::getuid(),
        std::process::id()
    );
    assert_eq!(ask(&mut c).await, want);
    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn shutdown_waits_for_the_handlers() {
    let d = Dir::new("wait");
    let server = Server::bind(&ServerConfig::new(d.sock())).unwrap();
    let shutdown = CancellationToken::new();
    let finished = Arc::new(AtomicBool::new(false));
    let handler = {
        let (shutdown, finished) = (shutdown.clone(), finished.clone());
        move |_stream: Stream, _peer: PeerCred| {
            let (shutdown, finished) = (shutdown.clone(), finished.clone());
            async move {
                shutdown.cancelled().await;
                // Work that outlives the signal, e.g. a last reply being written.
                tokio::time::sleep(Duration::from_millis(300)).await;
                finished.store(true, Ordering::SeqCst);
            }
        }
    };
    let task = tokio::spawn(server.serve(handler, shutdown.clone()));
    let _c = UnixStream::connect(d.sock()).await.unwrap();
    // Let the server accept it before stopping.
    tokio::time::sleep(Duration::from_millis(100)).await;
    shutdown.cancel();
    task.await.unwrap();
    assert!(
        finished.load(Ordering::SeqCst),
        "serve returned before its handler"
    );
    assert!(!d.sock().exists());
}
