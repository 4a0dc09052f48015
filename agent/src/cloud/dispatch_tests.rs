use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::FutureExt;
use serde_json::json;

use super::*;
use crate::cloud::Command;

/// Counts commands running at once, per name and in all.
#[derive(Default)]
struct Slow {
    now: Mutex<HashMap<String, usize>>,
    max_per_name: AtomicUsize,
    all: Arc<AtomicUsize>,
    max_all: Arc<AtomicUsize>,
}

impl Backend for Arc<Slow> {
    fn handle(&self, cmd: Command) -> futures::future::BoxFuture<'static, Map<String, Value>> {
        let this = self.clone();
        async move {
            let name = match &cmd {
                Command::StartDevice { device_id } | Command::GetDeviceStatus { device_id } => {
                    device_id.clone()
                }
                _ => String::new(),
            };
            let n = {
                let mut m = this.now.lock().unwrap();
                let c = m.entry(name.clone()).or_default();
                *c += 1;
                *c
            };
            this.max_per_name.fetch_max(n, Ordering::SeqCst);
            let all = this.all.fetch_add(1, Ordering::SeqCst) + 1;
            this.max_all.fetch_max(all, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(100)).await;
            *this.now.lock().unwrap().get_mut(&name).unwrap() -= 1;
            this.all.fetch_sub(1, Ordering::SeqCst);
            let mut m = Map::new();
            m.insert("status".into(), "success".into());
            m.insert("device_id".into(), name.into());
            m.insert("action".into(), "overridden?".into());
            m
        }
        .boxed()
    }
}

#[tokio::test(start_paused = true)]
async fn one_name_at_a_time_different_names_in_parallel() {
    let slow = Arc::new(Slow::default());
    let d = Dispatcher::new(Arc::new(slow.clone()));
    let (tx, mut rx) = mpsc::channel(16);
    for i in 0..6u64 {
        let name = if i % 2 == 0 { "a" } else { "b" };
        d.dispatch(
            Some(i),
            "start_device".into(),
            json!({"device_id": name, "correlation_id": i}),
            1 << 20,
            tx.clone(),
        );
    }
    let started = tokio::time::Instant::now();
    let mut acks = Vec::new();
    for _ in 0..6 {
        acks.push(rx.recv().await.unwrap());
    }
    // Three in a row per name (at least 300 ms); that the two names ran side by side
    // is shown by the counters, not by timing.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert_eq!(slow.max_per_name.load(Ordering::SeqCst), 1);
    assert_eq!(slow.max_all.load(Ordering::SeqCst), 2);
    assert!(d.locks.is_empty(), "lock entries are freed");
    acks.sort();
    let first: serde_json::Value =
        serde_json::from_str(acks[0].strip_prefix("430").expect("an ack of id 0")).unwrap();
    assert_eq!(
        first,
        serde_json::json!([{"action": "start_device", "correlation_id": 0, "device_id": "a", "status": "success"}])
    );
}

#[tokio::test(start_paused = true)]
async fn reads_are_not_held_behind_changes() {
    let slow = Arc::new(Slow::default());
    let d = Dispatcher::new(Arc::new(slow.clone()));
    let (tx, mut rx) = mpsc::channel(16);
    for i in 0..3u64 {
        d.dispatch(
            Some(i),
            "get_device_status".into(),
            json!({"device_id": "a"}),
            1 << 20,
            tx.clone(),
        );
    }
    for _ in 0..3 {
        rx.recv().await.unwrap();
    }
    assert_eq!(slow.max_per_name.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn errors_unknown_topics_and_oversized_replies() {
    let d = Dispatcher::new(Arc::new(Arc::new(Slow::default())));
    let ack = d
        .answer("delete_device", &json!({"correlation_id": 5}))
        .await
        .unwrap();
    assert_eq!(
        Value::Object(ack),
        json!({"action":"delete_device","correlation_id":5,"status":"error",
               "error":"Missing required field: 'Missing key: device_id'"})
    );
    assert_eq!(d.answer("no_such_topic", &json!({})).await, None);
    assert_eq!(d.answer("no_such_topic", &json!({})).await, None);
    let (tx, mut rx) = mpsc::channel(1);
    d.dispatch(
        Some(9),
        "get_device_status".into(),
        json!({"device_id": "x".repeat(300), "correlation_id": 1}),
        200,
        tx,
    );
    let text = rx.recv().await.unwrap();
    assert!(text.len() < 300, "{text}");
    let v: Value = serde_json::from_str(&text[3..]).unwrap();
    assert_eq!(v[0]["status"], "error");
    assert_eq!(v[0]["correlation_id"], 1);
    assert!(
        v[0]["error"]
            .as_str()
            .unwrap()
            .contains("maxPayload of 200 bytes"),
        "{v}"
    );
}
