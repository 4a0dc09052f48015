//! Many connected clients that never read: what they cost netmon in memory.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use e2e::Netns;

/// Connects `n` clients that never read, then changes an address on `changes` of
/// `names` so events are queued behind their unread discoveries, and waits `settle`.
/// Returns the streams (keep them open while measuring).
pub fn connect_idle(
    socket: &Path,
    n: usize,
    ns: &Netns,
    names: &[String],
    changes: usize,
    settle: Duration,
) -> Vec<UnixStream> {
    let mut streams = Vec::with_capacity(n);
    for i in 0..n {
        match UnixStream::connect(socket) {
            Ok(s) => streams.push(s),
            Err(e) => super::die(&format!("connect idle client {i}: {e}")),
        }
    }
    let mut cmds = String::new();
    for (i, name) in names.iter().take(changes).enumerate() {
        cmds.push_str(&format!(
            "addr add 10.251.{}.{}/32 dev {name}\n",
            i / 250,
            i % 250 + 1
        ));
    }
    if !cmds.is_empty() {
        let tmp = e2e::TempDir::new("bc");
        let file = tmp.join("changes");
        std::fs::write(&file, cmds).unwrap_or_else(|e| super::die(&format!("write: {e}")));
        ns.must_ip(&format!("-batch {}", file.display()));
    }
    std::thread::sleep(settle);
    streams
}

/// The first line a new client reads (a discovery, or the busy refusal over the cap).
pub fn first_line(socket: &Path) -> String {
    let s = UnixStream::connect(socket).unwrap_or_else(|e| super::die(&format!("connect: {e}")));
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut line = String::new();
    let _ = BufReader::new(s).read_line(&mut line);
    line
}
