//! What the state task does with netmon's events, the engine's reachability and
//! events, and the messages its own tasks send back.

use ipc::{ClientEvent, EventKind};
use tracing::{debug, info, warn};

use super::{Msg, State};
use crate::engine::EngineEvent;

impl State {
    pub(super) fn on_msg(&mut self, msg: Msg) {
        match msg {
            Msg::Netmon(ev) => self.on_netmon(ev),
            Msg::EngineUp(v) => {
                info!(version = %v.version, api = %v.api_version, "engine reachable");
                self.view.engine.reachable = true;
                self.view.engine.version = Some(v.version);
                self.view.engine.api_version = Some(v.api_version);
                self.view.engine.last_error = None;
                self.view.engine.connects += 1;
                self.engine_known = true;
                self.engine_up.send_replace(true);
                let owed = self.engine_stops.engine_up();
                self.start_stopped_by_engine(owed);
                // A (re)connected engine may have lost or changed anything.
                self.trigger(None);
            }
            Msg::EngineDown(reason) => {
                if self.view.engine.reachable || self.view.engine.last_error.is_none() {
                    warn!(%reason, "engine unreachable; retrying");
                }
                self.view.engine.reachable = false;
                self.view.engine.last_error = Some(reason);
                self.engine_stops.engine_down(std::time::Instant::now());
                self.engine_known = true;
                self.engine_up.send_replace(false);
            }
            Msg::Engine(ev) => self.on_engine_event(ev),
            Msg::Retry(call) => self.on_call(call),
            Msg::Reconcile(w) => self.trigger(Some(w)),
            Msg::RunDone { dry_run, result } => self.run_done(dry_run, result),
            Msg::Dhcp(ev) => self.on_dhcp(ev),
            Msg::Created {
                name,
                result,
                reply,
            } => self.created(name, result, reply),
            Msg::Cloud(ask) => self.on_cloud(ask),
            Msg::StoppedOnPurpose(name) => self.engine_stops.stopped_on_purpose(&name),
        }
    }

    fn on_netmon(&mut self, ev: ClientEvent) {
        match ev {
            ClientEvent::Connected => {
                info!("connected to netmon");
                self.view.netmon.connected = true;
                self.view.netmon.last_error = None;
            }
            ClientEvent::Disconnected { reason } => {
                warn!(%reason, "lost netmon; the client reconnects");
                self.view.netmon.connected = false;
                self.view.netmon.last_error = Some(reason);
            }
            ClientEvent::Event(ev) => {
                self.view.netmon.events += 1;
                if ev.instance.is_some() {
                    self.view.netmon.instance = ev.instance.clone();
                }
                let changed = self.cache.apply(&ev);
                self.note_parent_indexes();
                match &ev.kind {
                    EventKind::NetworkDiscovery(d) => {
                        self.view.netmon.discoveries += 1;
                        info!(interfaces = d.interfaces.len(), "netmon discovery");
                        self.trigger(None);
                    }
                    EventKind::NetworkChange(_) => {
                        let relevant: Vec<&String> =
                            changed.iter().filter(|n| self.uses_parent(n)).collect();
                        if !relevant.is_empty() {
                            info!(parents = ?relevant, "a vNIC parent changed");
                            self.trigger(None);
                        }
                    }
                    EventKind::Other(..) => {}
                }
            }
        }
    }

    fn on_engine_event(&mut self, ev: EngineEvent) {
        let gone = matches!(ev, EngineEvent::ContainerGone { .. });
        match ev {
            EngineEvent::ContainerStarted { name } => {
                if self.store.runtimes().contains_key(&name) {
                    self.engine_stops.started(&name);
                    if let Some(d) = self.dhcp.as_mut() {
                        d.stopped.remove(&name);
                    }
                    info!(container = %name, "runtime started; verifying its vNICs");
                    self.trigger(None);
                }
            }
            EngineEvent::ContainerDied { name } | EngineEvent::ContainerGone { name }
                if self.store.runtimes().contains_key(&name) =>
            {
                if gone {
                    self.engine_stops.gone(&name);
                } else {
                    self.engine_stops.died(&name, std::time::Instant::now());
                }
                if let Some(d) = self.dhcp.as_mut() {
                    d.stopped.insert(name.clone());
                }
                info!(container = %name, "a runtime's container stopped or is gone");
                self.trigger(None);
            }
            // A disconnect can take a runtime off its LAN; a connect cannot (and our own
            // runs connect constantly, so reacting to connects would echo every run).
            EngineEvent::Attachment {
                network,
                container,
                connected: false,
            } if self.carries_vnics(&network) => self.on_disconnect(network, container),
            // While a refusal is on record (a vNIC name held by the link of a network
            // not ours, say), the operator's disconnect may be its fix: try again now.
            EngineEvent::Attachment {
                network,
                container,
                connected: false,
            } if self.refused() && self.runtime_ids.contains(&container) => {
                info!(%network, %container, "a runtime left a network while a refusal is on record; trying again");
                self.trigger(None);
            }
            EngineEvent::Attachment { .. } => {}
            EngineEvent::NetworkGone { name, id } => {
                // Only a network some vNIC sits on matters; reacting to every network
                // removed on the host would make other users' churn cost us runs.
                if self.carries_vnics(&name) {
                    // Our own removals (a LAN move) echo here too: the same sorting as
                    // disconnects, with no container.
                    self.on_disconnect(name, String::new());
                } else {
                    debug!(network = %name, %id, "a network that carries no vNIC disappeared");
                }
            }
            EngineEvent::ContainerDied { name } | EngineEvent::ContainerGone { name } => {
                debug!(container = %name, "a container that is not a runtime stopped or is gone");
            }
            EngineEvent::Other => {}
        }
    }

    /// Starts the runtimes the engine stopped when it went down (restart policy
    /// `no`: it does not start them itself); those still running were behind a cut
    /// link, not stopped. Their start events bring the runs that put their MACs and
    /// names back.
    fn start_stopped_by_engine(&self, owed: std::collections::BTreeSet<String>) {
        let names: Vec<String> = owed
            .into_iter()
            .filter(|n| self.store.runtimes().contains_key(n))
            .collect();
        if names.is_empty() {
            return;
        }
        let docker = self.docker.clone();
        tokio::spawn(async move {
            let observed = match docker.observe_engine(&names).await {
                Ok(o) => o,
                Err(e) => {
                    return warn!(runtimes = ?names, error = %e, "cannot see whether the engine stopped these runtimes; not starting them");
                }
            };
            let stopped = names
                .iter()
                .filter(|n| observed.containers.get(*n).is_some_and(|c| !c.running));
            for name in stopped {
                match docker.start_container(name).await {
                    Ok(()) => {
                        info!(runtime = %name, "started the runtime the engine stopped when it went down")
                    }
                    Err(e) => {
                        warn!(runtime = %name, error = %e, "cannot start the runtime the engine stopped when it went down")
                    }
                }
            }
        });
    }

    /// Remembers each vNIC parent's ifindex; one that changed was deleted and
    /// re-created, and its runtimes' endpoints are stale: reattach them.
    fn note_parent_indexes(&mut self) {
        let parents: std::collections::BTreeSet<String> = self
            .store
            .runtimes()
            .values()
            .flatten()
            .map(|v| v.parent_interface.clone())
            .collect();
        for p in parents {
            let Some(index) = self.cache.get(&p).and_then(|i| i.index) else {
                continue;
            };
            if let Some(old) = self.parent_index.insert(p.clone(), index)
                && old != index
            {
                info!(parent = %p, old, new = index, "a vNIC parent was re-created; reattaching its runtimes");
                self.reattach.insert(p);
            }
        }
    }

    /// A container left a network carrying vNICs (or, with no container, the network
    /// was removed): a run, unless it is the echo of our own disconnect or removal
    /// (known once the run that made it ends).
    fn on_disconnect(&mut self, network: String, container: String) {
        if self.echoes.consume(&network, &container) {
            debug!(%network, %container, "the engine's echo of our own disconnect");
            return;
        }
        if self.runs.running.is_some() {
            self.echoes.hold(network, container);
            return;
        }
        info!(%network, %container, "a container was disconnected from a network carrying vNICs");
        self.trigger(None);
    }

    /// Whether the last run was refused a step (`refusal.rs`).
    fn refused(&self) -> bool {
        self.view
            .reconcile
            .last
            .as_ref()
            .is_some_and(|r| r.steps.iter().any(|s| s.refusal.is_some()))
    }

    /// Whether some vNIC was last attached to this network.
    fn carries_vnics(&self, network: &str) -> bool {
        self.store
            .runtimes()
            .values()
            .flatten()
            .any(|v| v.docker_network_name.as_deref() == Some(network))
    }

    pub(super) fn uses_parent(&self, name: &str) -> bool {
        self.store
            .runtimes()
            .values()
            .flatten()
            .any(|v| v.parent_interface == name)
    }
}
