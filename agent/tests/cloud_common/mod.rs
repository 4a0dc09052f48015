//! Shared by the cloud link tests: the link under test with a recording backend (the
//! transport, TLS and server are real; only the daemon behind the trait is a fake).

#![allow(dead_code)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent::cloud::{Backend, CloudConfig, Command, LinkStatus};
use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::{Map, Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Records every command; answers `{"status":"success","device_id"?,"handled":TOPIC}`.
#[derive(Default)]
pub struct Recorder {
    pub commands: Mutex<Vec<Command>>,
}

impl Backend for Recorder {
    fn handle(&self, cmd: Command) -> BoxFuture<'static, Map<String, Value>> {
        let mut m = Map::new();
        m.insert("status".into(), "success".into());
        m.insert("handled".into(), cmd.topic().into());
        if let Command::GetDeviceStatus { device_id } | Command::StartDevice { device_id } = &cmd {
            m.insert("device_id".into(), device_id.clone().into());
        }
        // A backend must not be able to forge the link's two keys.
        m.insert("action".into(), "forged".into());
        m.insert("correlation_id".into(), json!(-1));
        self.commands.lock().unwrap().push(cmd);
        futures::future::ready(m).boxed()
    }
}

/// A running link and every status it went through.
pub struct Link {
    pub status: watch::Receiver<LinkStatus>,
    pub history: Arc<Mutex<Vec<LinkStatus>>>,
    pub backend: Arc<Recorder>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

pub fn config(url: &str, cert: &Path, key: &Path, ca: &Path) -> CloudConfig {
    let mut c = CloudConfig::new(url);
    c.cert = cert.to_owned();
    c.key = key.to_owned();
    c.ca = Some(ca.to_owned());
    c
}

impl Link {
    pub fn start(config: CloudConfig) -> Link {
        let backend = Arc::new(Recorder::default());
        let (tx, rx) = watch::channel(LinkStatus::initial(&config.url));
        let stop = CancellationToken::new();
        let task = tokio::spawn(agent::cloud::run(config, backend.clone(), tx, stop.clone()));
        let history = Arc::new(Mutex::new(Vec::new()));
        let (mut w, h) = (rx.clone(), history.clone());
        tokio::spawn(async move {
            while w.changed().await.is_ok() {
                let s = w.borrow_and_update().clone();
                h.lock().unwrap().push(s);
            }
        });
        Link {
            status: rx,
            history,
            backend,
            stop,
            task: Some(task),
        }
    }

    /// Waits until the status satisfies `ok`; fails with the last status after `secs`.
    pub async fn wait(
        &mut self,
        secs: u64,
        what: &str,
        ok: impl Fn(&LinkStatus) -> bool,
    ) -> LinkStatus {
        let r = tokio::time::timeout(Duration::from_secs(secs), self.status.wait_for(|s| ok(s)))
            .await
            .map(|r| r.map(|s| s.clone()));
        match r {
            Ok(Ok(s)) => s,
            _ => panic!(
                "{what}: not within {secs} s; status now {:#?}",
                *self.status.borrow()
            ),
        }
    }

    pub async fn connected(&mut self, secs: u64) -> LinkStatus {
        self.wait(secs, "connected", |s| s.connected).await
    }

    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("the link stops within 10 s of shutdown")
                .expect("the link task did not panic");
        }
        assert_eq!(
            self.status.borrow().why_not,
            Some(agent::cloud::WhyNot::Stopped)
        );
    }
}

/// Runs blocking rig calls (the control endpoint) without stalling the link's tasks.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}
