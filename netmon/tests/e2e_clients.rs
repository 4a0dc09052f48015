//! The real netmon binary, as root in a fresh namespace: the client cap and what it
//! refuses to bind over.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use e2e::{NetmonProc, Netns, TempDir};

fn lan() -> Netns {
    let ns = Netns::new();
    ns.veth("ethA", "ethB");
    e2e::netmon::wait_oper_up(&ns, &["ethA", "ethB"]);
    ns
}

fn run_netmon(ns: &Netns, args: &[&str]) -> (i32, String) {
    e2e::netmon::run_to_end(ns, args)
}

/// A client that has been served its discovery (retrying while netmon still counts
/// an earlier, closed connection against the cap), with its line reader.
fn served(socket: &Path) -> BufReader<UnixStream> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = UnixStream::connect(socket).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).expect("a first line");
        if line.contains("network_discovery") {
            return r;
        }
        assert!(line.contains("busy"), "{line}");
        assert!(Instant::now() < deadline, "no slot freed in 10 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_client_over_the_cap_reads_busy_and_a_freed_slot_serves_again() {
    let ns = lan();
    let nm = NetmonProc::start(&ns, &["--debounce", "1s", "--max-clients", "2"]);
    // Two clients that stop reading after their discovery still hold their slots.
    let a = served(&nm.socket);
    let mut b = served(&nm.socket);
    let third = UnixStream::connect(&nm.socket).expect("connect");
    third
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut all = String::new();
    BufReader::new(third)
        .read_to_string(&mut all)
        .expect("the refusal, then end of stream");
    assert_eq!(
        all,
        "{\"success\":false,\"error\":\"busy: 2 clients connected (the limit); try again\"}\n"
    );
    // A closed client frees its slot.
    drop(a);
    let _c = served(&nm.socket);
    // The served client kept receiving all along.
    ns.must_ip("addr add 10.60.0.1/24 dev ethA");
    let mut line = String::new();
    b.read_line(&mut line).expect("an event");
    assert!(line.contains("\"type\":\"network_change\""), "{line}");
    assert!(line.contains("10.60.0.1"), "{line}");
}

#[test]
fn a_file_symlink_or_directory_at_the_socket_path_is_refused_and_left_alone() {
    let ns = lan();
    let dir = TempDir::new("nr");
    let path = dir.join("netmon.sock");
    let content = b"{\"precious\": true}\n";
    std::fs::write(&path, content).expect("write");
    let (code, text) = run_netmon(&ns, &["--socket", path.to_str().expect("utf-8")]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains(&format!("{} exists and is not a socket", path.display())),
        "{text}"
    );
    assert_eq!(std::fs::read(&path).expect("still there"), content);

    let link = dir.join("link.sock");
    std::os::unix::fs::symlink(&path, &link).expect("symlink");
    let (code, text) = run_netmon(&ns, &["--socket", link.to_str().expect("utf-8")]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("is not a socket"), "{text}");
    assert_eq!(std::fs::read_link(&link).expect("link kept"), path);
    assert_eq!(std::fs::read(&path).expect("target kept"), content);

    let sub = dir.join("dir.sock");
    std::fs::create_dir(&sub).expect("mkdir");
    let (code, text) = run_netmon(&ns, &["--socket", sub.to_str().expect("utf-8")]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("is not a socket"), "{text}");
    assert!(sub.is_dir());
}
