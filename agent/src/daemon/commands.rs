//! The control socket's commands, answered by the state task.

use std::time::Duration;

use futures::StreamExt;
use ipc::Reply;
use serde_json::Value;
use tracing::{debug, info};

use super::{Deferred, Msg, State, Waiter};
use crate::control::Call;
use crate::runtime::{self, CreateRequest};
use crate::status;
use crate::vnics::Runtimes;

/// Commands that write the store.
fn writes_store(command: &str) -> bool {
    matches!(
        command,
        "runtime_create" | "runtime_delete" | "store_reload" | "store_reset"
    )
}

impl State {
    pub(super) fn on_call(&mut self, call: Call) {
        let Call { request, reply } = call;
        let id = request.id.clone();
        let cmd = request.command.clone();
        debug!(command = %cmd, "control request");
        if writes_store(&cmd) && self.store.is_none() {
            self.deferred
                .push_back(Deferred::Call(Call { request, reply }));
            return;
        }
        let arg_name = || {
            request
                .args
                .get("name")
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        macro_rules! answer {
            ($r:expr $(,)?) => {{
                let _ = reply.send($r);
            }};
        }
        match cmd.as_str() {
            "status" => {
                let mut view = self.status();
                if !self.view.engine.reachable || view.runtimes.is_empty() {
                    return answer!(Reply::ok(id).with("status", view));
                }
                // Addresses of DHCP-mode vNICs live only in the engine: ask it, but
                // never let a slow engine hold the reply.
                let docker = self.docker.clone();
                let names: Vec<String> = view.runtimes.keys().cloned().collect();
                tokio::spawn(async move {
                    let look = futures::stream::iter(names)
                        .map(|n| {
                            let docker = docker.clone();
                            async move { docker.container(&n).await }
                        })
                        .buffer_unordered(8)
                        .filter_map(|r| async move { r.ok().flatten() })
                        .collect::<Vec<_>>();
                    match tokio::time::timeout(Duration::from_secs(2), look).await {
                        Ok(found) => status::fill_observed(&mut view, &found),
                        Err(_) => debug!("engine too slow for status addresses"),
                    }
                    let _ = reply.send(Reply::ok(id).with("status", view));
                });
            }
            "health" => {
                let s = self.status();
                let problems = status::health_problems(&s);
                answer!(
                    Reply::ok(id)
                        .with("healthy", problems.is_empty())
                        .with("problems", problems),
                )
            }
            "ping" => answer!(Reply::ok(id)),
            "reconcile" => {
                let dry = request.args.get("dry_run").and_then(Value::as_bool) == Some(true);
                if let Some(r) = self.needs_engine(&id, "reconcile") {
                    return answer!(r);
                }
                let w = Waiter::new(id, reply);
                if dry {
                    if self.runs.request_dry(w) {
                        self.start_run(true);
                    }
                } else {
                    self.trigger(Some(w));
                }
            }
            "runtime_list" => {
                answer!(Reply::ok(id).with("runtimes", status::runtimes(&self.runtimes_view)),)
            }
            "runtime_create" => {
                let req: CreateRequest =
                    match serde_json::from_value(Value::Object(request.args.clone())) {
                        Ok(r) => r,
                        Err(e) => {
                            return answer!(Reply::err(id, format!("runtime_create: {e}")));
                        }
                    };
                if let Some(r) = self.needs_engine(&id, "runtime create") {
                    return answer!(r);
                }
                let Some(store) = self.store.as_mut() else {
                    return;
                };
                let vnics = match runtime::validate(&req, store.runtimes()) {
                    Ok(v) => v,
                    Err(e) => return answer!(Reply::err(id, e.to_string())),
                };
                let stored = store.update(|r| {
                    r.insert(req.name.clone(), vnics.clone());
                });
                self.refresh_store_view();
                if let Err(e) = stored {
                    return answer!(Reply::err(id, format!("store: {e}")));
                }
                info!(runtime = %req.name, vnics = vnics.len(), "runtime stored; creating it");
                let docker = self.docker.clone();
                let tx = self.tx.clone();
                let mut waiter = Waiter::new(id, reply);
                waiter.extra.push((
                    "vnics".into(),
                    serde_json::to_value(status::runtimes(&Runtimes::from([(
                        req.name.clone(),
                        vnics,
                    )])))
                    .unwrap_or(Value::Null),
                ));
                tokio::spawn(async move {
                    let result = runtime::create_in_engine(&docker, &req)
                        .await
                        .map_err(|e| e.to_string());
                    let _ = tx
                        .send(Msg::Created {
                            req,
                            result,
                            waiter,
                        })
                        .await;
                });
            }
            "runtime_delete" => {
                let Some(name) = arg_name() else {
                    return answer!(Reply::err(id, "runtime_delete needs \"name\""));
                };
                if let Some(r) = self.needs_engine(&id, "runtime delete") {
                    return answer!(r);
                }
                let Some(store) = self.store.as_mut() else {
                    return;
                };
                let Some(vnics) = store.runtimes().get(&name).cloned() else {
                    return answer!(Reply::err(
                        id,
                        runtime::RuntimeError::NoSuchRuntime(name).to_string(),
                    ));
                };
                if let Err(e) = store.update(|r| r.remove(&name)) {
                    return answer!(Reply::err(id, format!("store: {e}")));
                }
                self.refresh_store_view();
                let unused: Vec<String> = vnics
                    .iter()
                    .map(|v| v.parent_interface.clone())
                    .filter(|p| !self.uses_parent(p))
                    .collect();
                info!(runtime = %name, "runtime forgotten; removing it from the engine");
                let docker = self.docker.clone();
                tokio::spawn(async move {
                    let r = match runtime::delete_in_engine(&docker, &name, &unused).await {
                        Ok(removed) => Reply::ok(id)
                            .with("runtime", &name)
                            .with("removed_networks", removed),
                        Err(e) => Reply::err(
                            id,
                            format!(
                                "runtime {name}: its vNIC records are removed but the engine said: {e}"
                            ),
                        ),
                    };
                    let _ = reply.send(r);
                });
            }
            "runtime_start" | "runtime_stop" | "runtime_restart" => {
                let Some(name) = arg_name() else {
                    return answer!(Reply::err(id, format!("{cmd} needs \"name\"")));
                };
                if !self.runtimes_view.contains_key(&name) {
                    return answer!(Reply::err(
                        id,
                        runtime::RuntimeError::NoSuchRuntime(name).to_string(),
                    ));
                }
                if let Some(r) = self.needs_engine(&id, &cmd.replace('_', " ")) {
                    return answer!(r);
                }
                let docker = self.docker.clone();
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    let r = match cmd.as_str() {
                        "runtime_start" => docker.start_container(&name).await,
                        "runtime_stop" => docker.stop_container(&name).await,
                        _ => docker.restart_container(&name).await,
                    };
                    let result = r.map_err(|e| e.to_string());
                    if cmd == "runtime_stop" || result.is_err() {
                        let r = match result {
                            Ok(()) => Reply::ok(id).with("runtime", &name),
                            Err(e) => Reply::err(id, format!("{name}: {e}")),
                        };
                        let _ = reply.send(r);
                        return;
                    }
                    // Started: answer once its vNICs are verified, so the caller sees
                    // the MAC back in place.
                    let mut waiter = Waiter::new(id, reply);
                    waiter.extra.push(("runtime".into(), Value::from(name)));
                    let _ = tx.send(Msg::Reconcile(waiter)).await;
                });
            }
            "store_reload" | "store_reset" => {
                let Some(store) = self.store.as_mut() else {
                    return;
                };
                let r = if cmd == "store_reload" {
                    store.reload()
                } else {
                    store.reset()
                };
                self.refresh_store_view();
                match r {
                    Ok(()) => {
                        info!(command = %cmd, "store reloaded");
                        answer!(
                            Reply::ok(id)
                                .with("runtimes", self.runtimes_view.len())
                                .with("fault", &self.fault_view),
                        );
                        self.trigger(None);
                    }
                    Err(e) => answer!(Reply::err(id, format!("{cmd}: {e}"))),
                }
            }
            other => answer!(Reply::err(id, format!("Unknown command: {other}"))),
        }
    }
}
