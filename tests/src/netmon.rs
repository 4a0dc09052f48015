//! Starting the real `netmon` binary inside a namespace and talking to it.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use crate::{ChildGuard, Netns, TempDir, bin, wait_for};

/// A running `netmon` in a namespace, with its socket in a temp dir.
pub struct NetmonProc {
    pub child: ChildGuard,
    pub socket: PathBuf,
    pub dir: TempDir,
}

impl NetmonProc {
    /// Starts `netmon --socket <tmp>/netmon.sock <extra args>` in `ns` and waits until
    /// its socket exists.
    pub fn start(ns: &Netns, extra: &[&str]) -> NetmonProc {
        let dir = TempDir::new("nm");
        let socket = dir.join("netmon.sock");
        let mut cmd = ns.command(&bin("netmon"));
        cmd.arg("--socket").arg(&socket).args(extra);
        cmd.env(
            "NETMON_LOG_LEVEL",
            std::env::var("NETMON_LOG_LEVEL").unwrap_or("info".into()),
        );
        cmd.stdin(Stdio::null());
        let child = cmd.spawn().expect("spawn netmon");
        let mut child = ChildGuard(Some(child));
        let s = socket.clone();
        wait_for(Duration::from_secs(10), "netmon's socket", || {
            if let Ok(Some(st)) = child.child().try_wait() {
                panic!("netmon exited early: {st}");
            }
            s.exists().then_some(())
        });
        NetmonProc { child, socket, dir }
    }
}
