//! The control socket's commands, one function each, answered by the state task.

use std::time::Duration;

use futures::StreamExt;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::oneshot;
use tracing::{debug, info};

use super::{Msg, State};
use crate::control::Call;
use crate::control::protocol::{Created, Deleted, Lifecycle, Pong, Reply, Request, StoreOutcome};
use crate::reconcile::ReconcileReport;
use crate::runtime::{self, CreateRequest, RuntimeError};
use crate::status::{self, HealthReport, StatusView};

/// Where one request's reply goes.
pub(crate) struct Responder {
    id: Option<Value>,
    tx: oneshot::Sender<Reply>,
}

impl Responder {
    pub(crate) fn ok(self, result: &impl Serialize) {
        let _ = self.tx.send(Reply::ok(self.id, result));
    }

    pub(crate) fn err(self, error: impl Into<String>) {
        let _ = self.tx.send(Reply::err(self.id, error));
    }
}

/// A request waiting for the report of a reconcile run.
pub(crate) enum Waiter {
    Reconcile(Responder),
    /// `runtime_create`: answered with where the new runtime's vNICs are.
    Created {
        name: String,
        reply: Responder,
    },
    /// `runtime_start` / `runtime_restart`: answered once its vNICs are verified.
    Started {
        name: String,
        action: &'static str,
        reply: Responder,
    },
}

impl State {
    pub(super) fn on_call(&mut self, call: Call) {
        let Call { env, reply, waited } = call;
        debug!(command = env.request.name(), "control request");
        if env.request.needs_engine() && !self.view.engine.reachable {
            match env.wait.filter(|w| !w.is_zero() && !waited) {
                Some(wait) => return self.wait_for_engine(Call { env, reply, waited }, wait),
                None => {
                    let why = format!(
                        "{} needs the container engine, which is {}{}",
                        env.request.name().replace('_', " "),
                        self.engine_unreachable(),
                        if waited { " (waited for it)" } else { "" }
                    );
                    let _ = reply.send(Reply::err(env.id, why));
                    return;
                }
            }
        }
        let r = Responder {
            id: env.id,
            tx: reply,
        };
        match env.request {
            Request::Ping => r.ok(&Pong {
                version: env!("CARGO_PKG_VERSION").into(),
                pid: std::process::id(),
            }),
            Request::Status => self.status_cmd(r),
            Request::Health => r.ok(&HealthReport::of(&self.status(), self.config.health_grace)),
            Request::Reconcile { dry_run } => self.reconcile_cmd(dry_run, r),
            Request::RuntimeList => r.ok(&self.status().runtimes),
            Request::RuntimeCreate(req) => self.create_cmd(req, r),
            Request::RuntimeDelete { name } => self.delete_cmd(name, r),
            Request::RuntimeStart { name } => self.lifecycle_cmd(name, "start", r),
            Request::RuntimeStop { name } => self.lifecycle_cmd(name, "stop", r),
            Request::RuntimeRestart { name } => self.lifecycle_cmd(name, "restart", r),
            Request::StoreReload => self.store_cmd(None, r),
            Request::StoreReset { force } => self.store_cmd(Some(force), r),
        }
    }

    /// Parks a command that needs the engine until it answers or `wait` passes; then
    /// it comes back once (answered with the reason if the engine is still away).
    fn wait_for_engine(&self, mut call: Call, wait: Duration) {
        let mut up = self.engine_up.subscribe();
        let tx = self.tx.clone();
        call.waited = true;
        tokio::spawn(async move {
            let _ = tokio::time::timeout(wait, up.wait_for(|up| *up)).await;
            let _ = tx.send(Msg::Retry(call)).await;
        });
    }

    pub(super) fn status(&self) -> StatusView {
        let mut v = self.view.clone();
        v.agent.uptime_s = self.started.elapsed().as_secs();
        v.interfaces = status::interfaces(&self.cache);
        v.runtimes = status::runtimes(self.store.runtimes());
        for (rt, vnics) in v.runtimes.iter_mut() {
            for vv in vnics {
                if let Some((st, since)) = self.states.get(&(rt.clone(), vv.name.clone())) {
                    vv.state = Some(st.clone());
                    vv.state_for_s = Some(since.elapsed().as_secs());
                }
                if let Some(d) = &self.dhcp
                    && vv.mode == crate::vnics::NetworkMode::Dhcp
                {
                    vv.dhcp = Some(d.view(rt, &vv.name));
                }
            }
        }
        v.unusable = self
            .store
            .unusable()
            .iter()
            .map(|(n, u)| (n.clone(), u.reason.clone()))
            .collect();
        let last = self.view.reconcile.last.as_ref();
        v.missing = v
            .runtimes
            .keys()
            .filter(|rt| crate::vnic_state::runtime_missing(rt, last))
            .cloned()
            .collect();
        v.store.fault = self.store.fault().cloned();
        v.reconcile.running = self.runs.running.is_some();
        v.reconcile.runs = self.runs.count;
        v.notes = v
            .reconcile
            .last
            .as_ref()
            .map(|r| r.notes.clone())
            .unwrap_or_default();
        v
    }

    fn status_cmd(&self, r: Responder) {
        let mut view = self.status();
        if !self.view.engine.reachable || view.runtimes.is_empty() {
            return r.ok(&view);
        }
        // Addresses of DHCP-mode vNICs live only in the engine: ask it, but never let
        // a slow engine hold the reply.
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
            r.ok(&view);
        });
    }

    fn reconcile_cmd(&mut self, dry_run: bool, r: Responder) {
        let w = Waiter::Reconcile(r);
        if !dry_run {
            return self.trigger(Some(w));
        }
        if self.runs.request_dry(w) {
            self.start_run(true);
        }
    }

    fn create_cmd(&mut self, req: CreateRequest, r: Responder) {
        if let Some(u) = self.store.unusable().get(&req.name) {
            return r.err(format!(
                "runtime {} is in the store but cannot be used ({}): repair {} and run `agent store reload`",
                req.name,
                u.reason,
                self.store.path().display()
            ));
        }
        let vnics = match runtime::validate(&req, self.store.runtimes()) {
            Ok(v) => v,
            Err(e) => return r.err(e.to_string()),
        };
        let stored = self.store.update(|rt| {
            rt.insert(req.name.clone(), vnics.clone());
        });
        if let Err(e) = stored {
            return r.err(format!("store: {e}"));
        }
        info!(runtime = %req.name, vnics = vnics.len(), "runtime stored; creating it");
        let docker = self.docker.clone();
        let tx = self.tx.clone();
        let pool = self.internal.clone();
        tokio::spawn(async move {
            let result = runtime::create_in_engine(docker.as_ref(), &req, &pool)
                .await
                .map_err(|e| e.to_string());
            let _ = tx
                .send(Msg::Created {
                    name: req.name,
                    result,
                    reply: r,
                })
                .await;
        });
    }

    /// The engine part of a create finished: attach the runtime, or forget it so the
    /// same command can be retried.
    pub(super) fn created(&mut self, name: String, result: Result<(), String>, reply: Responder) {
        match result {
            Ok(()) => self.trigger(Some(Waiter::Created { name, reply })),
            Err(e) => {
                if let Err(se) = self.store.update(|r| r.shift_remove(&name)) {
                    tracing::warn!(runtime = %name, error = %se, "could not forget a failed runtime");
                }
                reply.err(format!("runtime {name}: {e}"));
            }
        }
    }

    fn delete_cmd(&mut self, name: String, r: Responder) {
        let Some(vnics) = self.store.runtimes().get(&name).cloned() else {
            return r.err(RuntimeError::NoSuchRuntime(name).to_string());
        };
        if let Err(e) = self.store.update(|rt| rt.shift_remove(&name)) {
            return r.err(format!("store: {e}"));
        }
        self.engine_stops.gone(&name);
        if let Some(d) = self.dhcp.as_mut() {
            d.delete_runtime(&name);
        }
        let unused: Vec<String> = vnics
            .iter()
            .map(|v| v.parent_interface.clone())
            .filter(|p| !self.uses_parent(p))
            .collect();
        info!(runtime = %name, "runtime forgotten; removing it from the engine");
        let docker = self.docker.clone();
        let removals = self.removals.clone();
        let removal = removals.begin();
        tokio::spawn(async move {
            let removed = async {
                runtime::remove_runtime(docker.as_ref(), &name).await?;
                drop(removal);
                if !unused.is_empty() {
                    removals.settled().await;
                }
                runtime::remove_unused_networks(docker.as_ref(), &unused).await
            };
            match removed.await {
                Ok(networks) => r.ok(&Deleted {
                    runtime: name,
                    removed_networks: networks.removed,
                    left_networks: networks.left,
                }),
                Err(e) => r.err(format!(
                    "runtime {name}: its vNIC records are removed but the engine said: {e}"
                )),
            }
        });
    }

    fn lifecycle_cmd(&mut self, name: String, action: &'static str, r: Responder) {
        if !self.store.runtimes().contains_key(&name) {
            return r.err(RuntimeError::NoSuchRuntime(name).to_string());
        }
        let docker = self.docker.clone();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let result = match action {
                "start" => docker.start_container(&name).await,
                "stop" => docker.stop_container(&name).await,
                _ => docker.restart_container(&name).await,
            };
            match result {
                Err(e) => r.err(format!("{name}: {e}")),
                Ok(()) if action == "stop" => {
                    let _ = tx.send(Msg::StoppedOnPurpose(name.clone())).await;
                    r.ok(&Lifecycle {
                        runtime: name,
                        action: action.into(),
                        report: None,
                    })
                }
                // Started: answer once its vNICs are verified, so the caller sees the
                // MAC back in place.
                Ok(()) => {
                    let w = Waiter::Started {
                        name,
                        action,
                        reply: r,
                    };
                    let _ = tx.send(Msg::Reconcile(w)).await;
                }
            }
        });
    }

    /// `store_reload` (`reset` = None) or `store_reset` (`Some(force)`).
    fn store_cmd(&mut self, reset: Option<bool>, r: Responder) {
        let result = match reset {
            None => self.store.reload().map(|()| None),
            Some(force) => self.store.reset(force),
        };
        match result {
            Ok(kept) => {
                info!(reset = reset.is_some(), "store reloaded");
                r.ok(&StoreOutcome {
                    runtimes: self.store.runtimes().len(),
                    kept_as: kept.map(|p| p.display().to_string()),
                });
                self.trigger(None);
            }
            Err(e) => r.err(e.to_string()),
        }
    }

    /// Answers a waiter with the report of the run it waited for.
    pub(super) fn answer(&self, w: Waiter, result: Result<ReconcileReport, String>) {
        match w {
            Waiter::Reconcile(r) => match result {
                Ok(report) => r.ok(&report),
                Err(e) => r.err(format!("reconcile: {e}")),
            },
            Waiter::Created { name, reply } => {
                let vnics = self.status().runtimes.remove(&name).unwrap_or_default();
                reply.ok(&Created {
                    runtime: name,
                    vnics,
                    report: result.ok(),
                });
            }
            Waiter::Started {
                name,
                action,
                reply,
            } => reply.ok(&Lifecycle {
                runtime: name,
                action: action.into(),
                report: result.ok(),
            }),
        }
    }
}
