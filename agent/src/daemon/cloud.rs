//! The daemon's side of the cloud link ([`Backend`]). Each cloud command is mapped onto
//! the same typed control requests `agent runtime ...` sends (`Request::RuntimeCreate`,
//! `RuntimeDelete`, `RuntimeStart`, ...), handed to the state task as a control `Call`
//! (`Msg::Retry`, the path a control command takes after waiting for the engine), so
//! validation, the store and the engine work are the very code paths of the CLI. Reads
//! that need nothing the state task owns (container details, stats, `run_command`) go to
//! the engine directly; the interface cache is read with `Msg::Cloud`.
//!
//! Creates and deletes are acked at once and run in the background; their progress is
//! kept in `ops` for `get_device_status` (and `__orchestrator__` for
//! `delete_orchestrator`). A create or delete in progress refuses other changing
//! commands for that name with the contract's text.
//!
//! Over 400 lines: one method per command of CONTROL-PLANE.md, each short, kept beside
//! the operation table they share; the pure shapes live in `cloud_create.rs`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::Msg;
use crate::cloud::history::HOST;
use crate::cloud::period::{format_iso, parse_iso};
use crate::cloud::usage::Usage;
use crate::cloud::{Backend, Command, CreateRuntime, Period, RunCommand};
use crate::control::Call;
use crate::control::protocol::{Envelope, Request};
use crate::engine::Engine;
use crate::runtime::{self, CreateRequest};

/// The poll id of `delete_orchestrator`.
pub const ORCHESTRATOR: &str = "__orchestrator__";
/// How long a cloud command waits for the engine when it is away (as `--wait`).
const ENGINE_WAIT: Duration = Duration::from_secs(10);

/// What `agent run` needs for the link beyond [`crate::cloud::CloudConfig`].
#[derive(Clone, Debug)]
pub struct CloudOptions {
    pub link: crate::cloud::CloudConfig,
    /// The runtime image without its tag (`ghcr.io/autonomy-logic/openplc-runtime`).
    pub runtime_image: String,
    pub run_command_timeout: Duration,
}

/// Questions for the state task.
pub(super) enum CloudAsk {
    /// The interface cache; `None` before netmon's first discovery.
    Interfaces(oneshot::Sender<Option<Vec<ipc::Interface>>>),
}

/// A create or delete in progress (or failed) for one name.
#[derive(Clone, Debug)]
struct Op {
    operation: &'static str,
    status: &'static str,
    started_at: String,
    updated_at: String,
    step: Option<String>,
    error: Option<String>,
    message: Option<String>,
}

pub(super) struct Cloud {
    tx: mpsc::Sender<Msg>,
    engine: Arc<dyn Engine>,
    opts: CloudOptions,
    ops: Mutex<BTreeMap<String, Op>>,
    pub(super) usage: Arc<Usage>,
    /// The engine part of creates, one at a time: two creates at once can pick the same
    /// internal subnet and the engine refuses the second ("Pool overlaps", 403), which
    /// runtime.rs does not retry in every case. Reads and other names are not held.
    create_gate: tokio::sync::Mutex<()>,
}

/// The [`Backend`] the link calls.
pub(super) struct CloudBackend(pub(super) Arc<Cloud>);

impl Backend for CloudBackend {
    fn handle(&self, cmd: Command) -> BoxFuture<'static, Map<String, Value>> {
        let me = self.0.clone();
        Box::pin(async move { me.handle(cmd).await })
    }
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn error(text: impl Into<String>) -> Map<String, Value> {
    obj(json!({"status": "error", "error": text.into()}))
}

fn now() -> String {
    format_iso(SystemTime::now())
}

impl Cloud {
    pub(super) fn new(tx: mpsc::Sender<Msg>, engine: Arc<dyn Engine>, opts: CloudOptions) -> Self {
        Cloud {
            tx,
            engine,
            opts,
            ops: Mutex::default(),
            usage: Arc::default(),
            create_gate: tokio::sync::Mutex::new(()),
        }
    }

    /// A control request through the state task, as the CLI would send it.
    pub(super) async fn ask(&self, request: Request) -> Result<Value, String> {
        let (reply, rx) = oneshot::channel();
        let env = Envelope {
            id: None,
            wait: Some(ENGINE_WAIT),
            request,
        };
        let call = Call {
            env,
            reply,
            waited: false,
        };
        self.tx
            .send(Msg::Retry(call))
            .await
            .map_err(|_| "the agent is shutting down".to_string())?;
        let r = rx
            .await
            .map_err(|_| "the agent is shutting down".to_string())?;
        match r.success {
            true => Ok(r.result.unwrap_or(Value::Null)),
            false => Err(r.error.unwrap_or_default()),
        }
    }

    /// The runtimes in the store.
    pub(super) async fn names(&self) -> Vec<String> {
        match self.ask(Request::RuntimeList).await {
            Ok(Value::Object(m)) => m.keys().cloned().collect(),
            _ => Vec::new(),
        }
    }

    async fn interfaces(&self) -> Option<Vec<ipc::Interface>> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Cloud(CloudAsk::Interfaces(tx)))
            .await
            .ok()?;
        rx.await.ok().flatten()
    }

    fn set_op(&self, name: &str, f: impl FnOnce(&mut Op)) {
        let mut ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(op) = ops.get_mut(name) {
            f(op);
            op.updated_at = now();
        }
    }

    /// Starts an operation unless one runs for `name`: the contract's refusal.
    fn begin(
        &self,
        name: &str,
        operation: &'static str,
        status: &'static str,
    ) -> Result<(), String> {
        let mut ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(op) = ops.get(name)
            && op.status != "error"
            && op.status != "deleted"
        {
            return Err(format!(
                "Container {name} already has a {} operation in progress",
                op.operation
            ));
        }
        let t = now();
        ops.insert(
            name.to_owned(),
            Op {
                operation,
                status,
                started_at: t.clone(),
                updated_at: t,
                step: None,
                error: None,
                message: None,
            },
        );
        Ok(())
    }

    fn busy(&self, name: &str) -> Option<String> {
        let ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        ops.get(name)
            .filter(|op| op.status != "error" && op.status != "deleted")
            .map(|op| {
                format!(
                    "Container {name} already has a {} operation in progress",
                    op.operation
                )
            })
    }

    fn end_op(&self, name: &str, result: Result<(), String>) {
        match result {
            Ok(()) => {
                self.ops
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(name);
            }
            Err(e) => {
                warn!(runtime = name, error = %e, "cloud: operation failed");
                self.set_op(name, |op| {
                    op.status = "error";
                    op.error = Some(e);
                });
            }
        }
    }

    async fn handle(self: Arc<Self>, cmd: Command) -> Map<String, Value> {
        match cmd {
            Command::CreateRuntime(c) => self.create(c),
            Command::DeleteDevice { device_id } => self.delete(device_id).await,
            Command::StartDevice { device_id } => self.lifecycle(device_id, "start").await,
            Command::StopDevice { device_id } => self.lifecycle(device_id, "stop").await,
            Command::RestartDevice { device_id } => self.lifecycle(device_id, "restart").await,
            Command::GetDeviceStatus { device_id } => self.device_status(&device_id).await,
            Command::GetHostInterfaces {
                include_virtual,
                detailed,
            } => self.host_interfaces(include_virtual, detailed).await,
            Command::GetConsumptionDevice {
                device_id,
                cpu_period,
                memory_period,
            } => {
                self.consumption_device(&device_id, cpu_period, memory_period)
                    .await
            }
            Command::GetConsumptionOrchestrator {
                cpu_period,
                memory_period,
            } => self.consumption_host(cpu_period, memory_period).await,
            Command::RunCommand(rc) => self.run_command(rc).await,
            Command::DeleteOrchestrator => self.delete_orchestrator(),
        }
    }

    fn create(self: Arc<Self>, c: CreateRuntime) -> Map<String, Value> {
        let name = c.container_name.clone();
        let vnics = match super::cloud_create::vnics(&c) {
            Ok(v) => v,
            Err(e) => return error(format!("Validation error: {e}")),
        };
        if let Err(e) = self.begin(&name, "create", "creating") {
            return error(e);
        }
        if c.dedicated_interface.is_some()
            || c.serial_configs.as_ref().is_some_and(|s| !s.is_empty())
        {
            warn!(runtime = %name, "cloud: dedicated_interface and serial_configs are not supported yet; ignored");
        }
        let tag = c.runtime_version.clone().unwrap_or_else(|| "latest".into());
        let image = format!("{}:{tag}", self.opts.runtime_image);
        let me = self.clone();
        let n = name.clone();
        tokio::spawn(async move {
            me.set_op(&n, |op| op.step = Some(format!("pulling image {image}")));
            let result = async {
                super::cloud_create::resolve_image(me.engine.as_ref(), &image).await?;
                me.set_op(&n, |op| op.step = Some("creating container".into()));
                let req = CreateRequest {
                    name: n.clone(),
                    image,
                    cmd: None,
                    vnics,
                };
                let _one = me.create_gate.lock().await;
                me.ask(Request::RuntimeCreate(req)).await.map(drop)
            }
            .await;
            me.end_op(&n, result);
        });
        info!(runtime = %name, "cloud: create started");
        obj(json!({
            "status": "creating",
            "container_id": name,
            "message": format!("Container creation started for {name}"),
        }))
    }

    async fn delete(self: Arc<Self>, name: String) -> Map<String, Value> {
        if !self.names().await.contains(&name) && self.busy(&name).is_none() {
            return not_found(&name);
        }
        if let Err(e) = self.begin(&name, "delete", "deleting") {
            return error(e);
        }
        let me = self.clone();
        let n = name.clone();
        tokio::spawn(async move {
            me.set_op(&n, |op| {
                op.step = Some("removing container and networks".into())
            });
            let r = me.ask(Request::RuntimeDelete { name: n.clone() }).await;
            me.end_op(&n, r.map(drop));
        });
        obj(json!({
            "status": "deleting",
            "device_id": name,
            "message": format!("Container deletion started for {name}"),
        }))
    }

    async fn lifecycle(&self, name: String, action: &'static str) -> Map<String, Value> {
        if let Some(e) = self.busy(&name) {
            return error(e);
        }
        let req = match action {
            "start" => Request::RuntimeStart { name: name.clone() },
            "stop" => Request::RuntimeStop { name: name.clone() },
            _ => Request::RuntimeRestart { name: name.clone() },
        };
        match self.ask(req).await {
            Err(e) => {
                let mut m = error(e);
                m.insert("success".into(), false.into());
                m.insert("device_id".into(), name.into());
                m
            }
            Ok(_) => {
                let d = self.engine.details(&name).await.ok().flatten();
                obj(json!({
                    "status": "success",
                    "success": true,
                    "device_id": name,
                    "message": format!("Container {name}: {action} done"),
                    "container_status": d.as_ref().map(|d| d.status.clone()),
                    "is_running": d.as_ref().map(|d| d.running),
                }))
            }
        }
    }

    async fn device_status(&self, name: &str) -> Map<String, Value> {
        let op = self
            .ops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned();
        if let Some(op) = op {
            let mut m = obj(json!({
                "status": op.status,
                "device_id": name,
                "operation": op.operation,
                "started_at": op.started_at,
                "updated_at": op.updated_at,
            }));
            for (k, v) in [
                ("step", op.step),
                ("error", op.error),
                ("message", op.message),
            ] {
                if let Some(v) = v {
                    m.insert(k.into(), v.into());
                }
            }
            return m;
        }
        if name == ORCHESTRATOR {
            return not_found(name);
        }
        // One read of the store gives both whether the runtime exists and its vNICs'
        // addresses as the agent knows them (static, or a DHCP lease it recorded).
        let list = self.ask(Request::RuntimeList).await.unwrap_or_default();
        let Some(vnics) = list.get(name) else {
            return not_found(name);
        };
        let known: BTreeMap<String, super::cloud_create::Known> = vnics
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|vn| {
                let known = super::cloud_create::Known {
                    ip: vn["ipv4"]
                        .as_str()
                        .and_then(|ip| ip.split('/').next())
                        .map(str::to_owned),
                    mac: vn["mac"].as_str().map(str::to_owned),
                };
                Some((vn["network"].as_str()?.to_owned(), known))
            })
            .collect();
        match self.engine.details(name).await {
            Ok(Some(d)) => super::cloud_create::status_fields(name, d, &known),
            Ok(None) => not_found(name),
            Err(e) => error(format!("the container engine: {e}")),
        }
    }

    async fn host_interfaces(&self, include_virtual: bool, detailed: bool) -> Map<String, Value> {
        match self.interfaces().await {
            None => error("no interface data from netmon yet: is netmon running?"),
            Some(list) => obj(json!({
                "status": "success",
                "interfaces": super::cloud_create::interfaces_json(&list, include_virtual, detailed),
            })),
        }
    }

    async fn consumption_device(&self, name: &str, cpu: Period, mem: Period) -> Map<String, Value> {
        let Ok(Some(d)) = self.engine.details(name).await else {
            return not_found(name);
        };
        let (cpu_usage, memory_usage) = self.series(name, cpu, mem);
        obj(json!({
            "device_id": name,
            "memory": if d.memory_limit > 0 { format!("{} MB", d.memory_limit / 1_000_000) } else { "unlimited".into() },
            "cpu": if d.nano_cpus > 0 { format!("{:.1} vCPU", d.nano_cpus as f64 / 1e9) } else { "unlimited".into() },
            "cpu_usage": cpu_usage,
            "memory_usage": memory_usage,
        }))
    }

    fn series(&self, key: &str, cpu: Period, mem: Period) -> (Value, Value) {
        let t = SystemTime::now();
        let h = self.usage.history.lock().unwrap_or_else(|p| p.into_inner());
        let (a, b) = cpu.window(t);
        let c: Vec<Value> = h
            .range(key, a, b)
            .iter()
            .map(|s| json!({"timestamp": format_iso(s.at), "cpu": (s.cpu * 10.0).round() / 10.0}))
            .collect();
        let (a, b) = mem.window(t);
        let m: Vec<Value> = h
            .range(key, a, b)
            .iter()
            .map(|s| json!({"timestamp": format_iso(s.at), "memory": (s.memory * 10.0).round() / 10.0}))
            .collect();
        (Value::Array(c), Value::Array(m))
    }

    async fn consumption_host(&self, cpu: Period, mem: Period) -> Map<String, Value> {
        let list = self.interfaces().await.unwrap_or_default();
        let (cpu_usage, memory_usage) = self.series(HOST, cpu, mem);
        let mut m = super::cloud_create::host_facts(&list);
        m.insert("cpu_usage".into(), cpu_usage);
        m.insert("memory_usage".into(), memory_usage);
        m
    }

    async fn run_command(&self, rc: RunCommand) -> Map<String, Value> {
        if let Some(e) = self.busy(&rc.device_id) {
            return error(e);
        }
        let internal = runtime::internal_network(&rc.device_id);
        let ip = match self.engine.details(&rc.device_id).await {
            Ok(Some(d)) => d
                .networks
                .get(&internal)
                .and_then(|a| a.ip_address.as_deref())
                .and_then(|ip| ip.parse::<Ipv4Addr>().ok()),
            Ok(None) => return not_found(&rc.device_id),
            Err(e) => return error(format!("the container engine: {e}")),
        };
        let Some(ip) = ip else {
            return error(format!(
                "Device {} has no address on {internal}: is it running?",
                rc.device_id
            ));
        };
        match crate::cloud::http::run_command(ip, &rc, self.opts.run_command_timeout).await {
            Ok(m) => m,
            Err(e) => error(e),
        }
    }

    fn delete_orchestrator(self: Arc<Self>) -> Map<String, Value> {
        if let Err(e) = self.begin(ORCHESTRATOR, "delete_orchestrator", "deleting") {
            return error(e);
        }
        let me = self.clone();
        tokio::spawn(async move {
            let r = super::cloud_create::remove_everything(&me, |step| {
                me.set_op(ORCHESTRATOR, |op| op.step = Some(step.to_owned()))
            })
            .await;
            match r {
                Ok(done) => me.set_op(ORCHESTRATOR, |op| {
                    op.status = "deleted";
                    op.step = Some("done".into());
                    op.message = Some(done);
                }),
                Err(e) => me.end_op(ORCHESTRATOR, Err(e)),
            }
        });
        obj(json!({
            "status": "accepted",
            "message": "Orchestrator deletion started: every runtime, every managed network, then the agent's own deployment",
            "poll_device_id": ORCHESTRATOR,
        }))
    }

    pub(super) fn engine(&self) -> &dyn Engine {
        self.engine.as_ref()
    }
}

fn not_found(name: &str) -> Map<String, Value> {
    obj(json!({
        "status": "not_found",
        "device_id": name,
        "message": format!("Device {name} not found"),
    }))
}

/// Parses the engine's RFC 3339 start time into seconds up to now.
pub(super) fn uptime(started_at: &str) -> Option<u64> {
    let t = parse_iso(started_at)?;
    SystemTime::now()
        .duration_since(t)
        .ok()
        .map(|d| d.as_secs())
}

impl super::State {
    /// Answers the cloud backend's questions about what the state task owns.
    pub(super) fn on_cloud(&mut self, ask: CloudAsk) {
        match ask {
            CloudAsk::Interfaces(reply) => {
                let known = self.view.netmon.discoveries > 0 || !self.cache.is_empty();
                let list = known.then(|| self.cache.interfaces().cloned().collect());
                let _ = reply.send(list);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::FakeEngine;

    fn cloud() -> Cloud {
        let (tx, _rx) = mpsc::channel(1);
        let opts = CloudOptions {
            link: crate::cloud::CloudConfig::new("https://localhost"),
            runtime_image: "img".into(),
            run_command_timeout: Duration::from_secs(1),
        };
        Cloud::new(tx, Arc::new(FakeEngine::new()), opts)
    }

    #[test]
    fn an_operation_in_progress_refuses_with_the_contract_text() {
        let c = cloud();
        c.begin("rt", "create", "creating").unwrap();
        let text = "Container rt already has a create operation in progress";
        assert_eq!(c.begin("rt", "delete", "deleting").unwrap_err(), text);
        assert_eq!(c.busy("rt").as_deref(), Some(text));
        assert_eq!(c.busy("other"), None, "other names are not held");
        // A failed create is shown, and a new try is allowed.
        c.end_op("rt", Err("no image".into()));
        assert_eq!(c.busy("rt"), None);
        c.begin("rt", "create", "creating").unwrap();
        c.end_op("rt", Ok(()));
        assert!(c.ops.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn operation_progress_is_what_get_device_status_shows() {
        let c = cloud();
        c.begin("rt", "delete", "deleting").unwrap();
        c.set_op("rt", |op| op.step = Some("removing".into()));
        let m = c.device_status("rt").await;
        assert_eq!(m["status"], "deleting");
        assert_eq!(m["operation"], "delete");
        assert_eq!(m["step"], "removing");
        assert!(m["started_at"].is_string() && m["updated_at"].is_string());
        let m = c.device_status(ORCHESTRATOR).await;
        assert_eq!(m["status"], "not_found");
    }
}
