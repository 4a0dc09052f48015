//! [`Engine`] for [`FakeEngine`]: each call is recorded, may be told to fail, then
//! acts on the in-memory state.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use ipc::MacAddr;
use ipnetwork::Ipv4Network;

use super::{Call, FAKE_HOST, FakeEngine};
use crate::engine::{
    CallCounts, ContainerInfo, ContainerSpec, Engine, EngineError, EngineEvent, EngineFuture,
    EngineVersion, NetworkInfo, NetworkSpec, NsLink, Observed, Pool, is_managed,
};
use crate::engine::{ContainerDetails, ContainerStats, NetworkAddress};
use crate::netns::{Netns, NetnsError};

impl Engine for FakeEngine {
    fn host(&self) -> String {
        FAKE_HOST.to_string()
    }

    fn counts(&self) -> CallCounts {
        self.lock().counts.clone()
    }

    fn version(&self) -> EngineFuture<'_, EngineVersion> {
        self.call(Call::Version, "", |s| {
            s.counts.reads += 1;
            Ok(EngineVersion {
                version: "20.10.0-fake".to_string(),
                api_version: "1.41".to_string(),
            })
        })
    }

    fn observe_engine<'a>(&'a self, containers: &'a [String]) -> EngineFuture<'a, Observed> {
        self.call(Call::Observe, "", |s| {
            s.counts.reads += 1 + containers.len() as u64;
            Ok(s.observe(containers, false))
        })
    }

    fn observe_reusing<'a>(
        &'a self,
        containers: &'a [String],
        known: &'a BTreeMap<String, ContainerInfo>,
    ) -> EngineFuture<'a, Observed> {
        self.call(Call::Observe, "", |s| {
            let mut o = s.observe(containers, true);
            for (name, c) in o.containers.iter_mut() {
                match known.get(name) {
                    Some(k) => *c = k.clone(),
                    None => {
                        s.counts.reads += 1;
                        s.counts.mac_checks += u64::from(c.running);
                    }
                }
            }
            s.counts.reads += 1;
            Ok(o)
        })
    }

    fn read_links_of<'a>(
        &'a self,
        observed: &'a mut Observed,
        names: &'a BTreeSet<String>,
    ) -> BoxFuture<'a, ()> {
        for c in observed.containers.values_mut() {
            if !names.contains(&c.name) || c.pid.is_none() {
                continue;
            }
            let Ok(mut s) = self.enter(Call::ReadLinks, &c.name) else {
                c.ns_error = Some("the fake was told to fail this read".to_string());
                continue;
            };
            s.counts.mac_checks += 1;
            c.ns_links = s
                .containers
                .get(&c.name)
                .map(|x| x.ns_links.clone())
                .unwrap_or_default();
        }
        futures::future::ready(()).boxed()
    }

    fn container<'a>(&'a self, name: &'a str) -> EngineFuture<'a, Option<ContainerInfo>> {
        self.call(Call::Container, name, |s| {
            s.counts.reads += 1;
            let c = s.containers.get(name).cloned();
            s.counts.mac_checks += u64::from(c.as_ref().is_some_and(|c| c.running));
            Ok(c)
        })
    }

    fn list_networks(&self) -> EngineFuture<'_, Vec<NetworkInfo>> {
        self.call(Call::ListNetworks, "", |s| {
            s.counts.reads += 1;
            Ok(s.networks.values().cloned().collect())
        })
    }

    fn list_managed_containers(&self) -> EngineFuture<'_, Vec<String>> {
        self.call(Call::ListManaged, "", |s| {
            s.counts.reads += 1;
            Ok(s.containers
                .values()
                .filter(|c| is_managed(&c.labels))
                .map(|c| c.name.clone())
                .collect())
        })
    }

    fn create_network<'a>(&'a self, spec: &'a NetworkSpec) -> EngineFuture<'a, String> {
        self.call(Call::CreateNetwork, &spec.name, |s| {
            let (pools, parent) = (spec.pools.clone(), Some(spec.parent.as_str()));
            Ok(s.create(&spec.name, "macvlan", parent, pools, &spec.labels))
        })
    }

    fn create_internal_network<'a>(
        &'a self,
        name: &'a str,
        subnet: Ipv4Network,
        labels: &'a BTreeMap<String, String>,
    ) -> EngineFuture<'a, String> {
        self.call(Call::CreateInternalNetwork, name, move |s| {
            let pools = vec![Pool {
                subnet,
                gateway: Some(crate::internal_pool::gateway(subnet)),
            }];
            Ok(s.create(name, "bridge", None, pools, labels))
        })
    }

    fn remove_network<'a>(&'a self, name_or_id: &'a str) -> EngineFuture<'a, ()> {
        self.call(Call::RemoveNetwork, name_or_id, |s| {
            s.counts.network_remove += 1;
            s.remove_network(name_or_id)
        })
    }

    fn connect<'a>(
        &'a self,
        container: &'a str,
        network: &'a str,
        ipv4: Option<Ipv4Addr>,
        _mac: Option<MacAddr>,
    ) -> EngineFuture<'a, ()> {
        self.call(Call::Connect, &format!("{container} {network}"), move |s| {
            s.counts.connect += 1;
            s.connect(container, network, ipv4)
        })
    }

    fn disconnect<'a>(&'a self, container: &'a str, network: &'a str) -> EngineFuture<'a, ()> {
        self.call(Call::Disconnect, &format!("{container} {network}"), |s| {
            s.counts.disconnect += 1;
            s.disconnect(container, network)
        })
    }

    fn create_container<'a>(&'a self, spec: &'a ContainerSpec) -> EngineFuture<'a, String> {
        self.call(Call::CreateContainer, &spec.name, |s| {
            s.counts.container_changes += 1;
            s.create_container(spec)
        })
    }

    fn start_container<'a>(&'a self, name: &'a str) -> EngineFuture<'a, ()> {
        self.call(Call::StartContainer, name, |s| {
            s.counts.container_changes += 1;
            s.start(name).map(drop)
        })
    }

    fn stop_container<'a>(&'a self, name: &'a str) -> EngineFuture<'a, ()> {
        self.call(Call::StopContainer, name, |s| {
            s.counts.container_changes += 1;
            s.stop(name)
        })
    }

    fn restart_container<'a>(&'a self, name: &'a str) -> EngineFuture<'a, ()> {
        self.call(Call::RestartContainer, name, |s| {
            s.counts.container_changes += 1;
            s.stop(name)?;
            s.start(name).map(drop)
        })
    }

    fn remove_container<'a>(&'a self, name: &'a str) -> EngineFuture<'a, ()> {
        self.call(Call::RemoveContainer, name, |s| {
            s.counts.container_changes += 1;
            s.remove_container(name);
            Ok(())
        })
    }

    fn events(&self) -> BoxStream<'static, Result<EngineEvent, EngineError>> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        match self.enter(Call::Events, "") {
            Ok(mut s) => s.events.push(tx),
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        }
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) })
            .boxed()
    }

    fn set_mac_inside<'a>(
        &'a self,
        pid: u32,
        ifname: &'a str,
        mac: MacAddr,
    ) -> BoxFuture<'a, Result<Vec<NsLink>, NetnsError>> {
        let r = self.set_mac_in(pid, ifname, mac);
        futures::future::ready(r).boxed()
    }

    // The cloud's reads: details and stats from the fake's containers; images: every
    // image exists locally and no registry answers (as on this test machine).
    fn details<'a>(&'a self, name: &'a str) -> EngineFuture<'a, Option<ContainerDetails>> {
        self.call(Call::Details, name, |s| {
            s.counts.reads += 1;
            Ok(s.containers.get(name).map(|c| ContainerDetails {
                status: if c.running { "running" } else { "exited" }.into(),
                running: c.running,
                networks: c
                    .endpoints
                    .iter()
                    .map(|e| {
                        let a = NetworkAddress {
                            ip_address: e.ipv4.map(|i| i.to_string()),
                            mac_address: e.mac.map(|m| m.to_string()),
                            gateway: None,
                        };
                        (e.network_name.clone(), a)
                    })
                    .collect(),
                ..Default::default()
            }))
        })
    }

    fn stats<'a>(&'a self, name: &'a str) -> EngineFuture<'a, Option<ContainerStats>> {
        self.call(Call::Stats, name, |s| {
            s.counts.reads += 1;
            Ok(s.containers.get(name).map(|_| ContainerStats::default()))
        })
    }

    fn pull_image<'a>(&'a self, image: &'a str) -> EngineFuture<'a, ()> {
        let message = format!("pull image {image}: no registry in the fake");
        self.call(Call::Image, image, move |_| {
            Err(EngineError::Api {
                status: 500,
                message,
            })
        })
    }

    fn image_exists<'a>(&'a self, image: &'a str) -> EngineFuture<'a, bool> {
        self.call(Call::Image, image, |_| Ok(true))
    }

    fn name_inside(
        &self,
        pid: u32,
        wants: Vec<crate::netns::NameWant>,
    ) -> BoxFuture<'_, Result<Vec<NsLink>, NetnsError>> {
        // As the kernel pass does: a wanted name held by a link that is neither being
        // renamed nor ours (no alias of ours) refuses the whole pass.
        let ns = Netns::Pid(pid);
        let held = self.peek_pid(pid).and_then(|links| {
            wants.iter().find_map(|w| {
                let holder = links.iter().find(|h| {
                    h.name == w.name
                        && h.index != w.index
                        && !wants.iter().any(|x| x.index == h.index)
                        && crate::netns::engine_name(h).is_none()
                })?;
                let link = links.iter().find(|l| l.index == w.index)?;
                Some(NetnsError::NameTaken {
                    ns,
                    link: link.name.clone(),
                    to: w.name.clone(),
                    holder: holder.name.clone(),
                })
            })
        });
        if let Some(e) = held {
            return futures::future::ready(Err(e)).boxed();
        }
        let r = self.links_in(pid, |links| {
            for w in wants {
                let Some(l) = links.iter_mut().find(|l| l.index == w.index) else {
                    continue;
                };
                if let Some(mac) = w.mac {
                    l.mac = Some(mac);
                }
                if l.name != w.name {
                    if crate::netns::engine_name(l).is_none() {
                        let prefix = crate::netns::ALIAS_PREFIX;
                        l.alias = Some(format!("{prefix}{}:{}", l.name, w.endpoint));
                    }
                    l.name = w.name;
                }
            }
        });
        futures::future::ready(r).boxed()
    }

    fn links_inside(&self, pid: u32) -> BoxFuture<'_, Result<Vec<NsLink>, NetnsError>> {
        let r = self.inside(pid, Call::ReadLinks, "", |counts, _| {
            counts.mac_checks += 1;
            Ok(())
        });
        futures::future::ready(r).boxed()
    }

    fn give_back_inside(
        &self,
        pid: u32,
        endpoint: String,
        ip: Option<std::net::Ipv4Addr>,
    ) -> BoxFuture<'_, Result<crate::netns::GaveBack, NetnsError>> {
        use crate::netns::{GaveBack, engine_name, link_of_endpoint};
        // As the kernel pass does; one call recorded, a rename when it renamed, a
        // read otherwise.
        let Some(links) = self.peek_pid(pid) else {
            let r = self.inside(pid, Call::ReadLinks, "", |_, _| Ok(()));
            return futures::future::ready(r.map(|_| GaveBack::NotFound)).boxed();
        };
        let at = link_of_endpoint(&links, &endpoint, ip)
            .and_then(|l| links.iter().position(|x| x.index == l.index));
        let engine = at.and_then(|i| {
            let l = &links[i];
            engine_name(l).filter(|e| *e != l.name).map(str::to_string)
        });
        let r = match (at, engine) {
            (Some(i), Some(engine)) => {
                let from = links[i].name.clone();
                self.links_in(pid, |links| links[i].name = engine.clone())
                    .map(|_| GaveBack::Renamed(from, engine))
            }
            (found, _) => self
                .inside(pid, Call::ReadLinks, "", |counts, _| {
                    counts.mac_checks += 1;
                    Ok(())
                })
                .map(|_| match found {
                    Some(_) => GaveBack::Unchanged,
                    None => GaveBack::NotFound,
                }),
        };
        futures::future::ready(r).boxed()
    }

    fn delete_inside(
        &self,
        pid: u32,
        index: u32,
    ) -> BoxFuture<'_, Result<Vec<NsLink>, NetnsError>> {
        let r = self.links_in(pid, |links| links.retain(|l| l.index != index));
        futures::future::ready(r).boxed()
    }
}

impl FakeEngine {
    /// The links inside the container running as `pid`, without recording a call.
    fn peek_pid(&self, pid: u32) -> Option<Vec<NsLink>> {
        let s = self.lock();
        let c = s.containers.values().find(|c| c.pid == Some(pid))?;
        Some(c.ns_links.clone())
    }

    /// A rename or deletion inside the container running as `pid`.
    fn links_in(
        &self,
        pid: u32,
        f: impl FnOnce(&mut Vec<NsLink>),
    ) -> Result<Vec<NsLink>, NetnsError> {
        self.inside(pid, Call::Rename, "", |counts, links| {
            counts.renames += 1;
            f(links);
            Ok(())
        })
    }

    fn set_mac_in(&self, pid: u32, ifname: &str, mac: MacAddr) -> Result<Vec<NsLink>, NetnsError> {
        let ns = Netns::Pid(pid);
        self.inside(pid, Call::SetMac, &format!(" {ifname}"), |counts, links| {
            counts.mac_sets += 1;
            let link =
                links
                    .iter_mut()
                    .find(|l| l.name == ifname)
                    .ok_or_else(|| NetnsError::NoLink {
                        ns,
                        name: ifname.to_string(),
                    })?;
            link.mac = Some(mac);
            Ok(())
        })
    }

    /// Records `call` on "<owner of pid><suffix>" and runs `f` on that container's
    /// links; the links after.
    fn inside(
        &self,
        pid: u32,
        call: Call,
        suffix: &str,
        f: impl FnOnce(&mut CallCounts, &mut Vec<NsLink>) -> Result<(), NetnsError>,
    ) -> Result<Vec<NsLink>, NetnsError> {
        let ns = Netns::Pid(pid);
        // A failure the test asked for (or the fake being down) comes back as the
        // namespace worker failing: the caller sees a `NetnsError`, as from the kernel.
        let told = |e: EngineError| NetnsError::Thread {
            ns,
            reason: e.to_string(),
        };
        let owner = self
            .lock()
            .containers
            .values()
            .find(|c| c.pid == Some(pid))
            .map(|c| c.name.clone())
            .unwrap_or_default();
        let mut s = self
            .enter(call, &format!("{owner}{suffix}"))
            .map_err(told)?;
        let s = &mut *s;
        let c = s
            .containers
            .values_mut()
            .find(|c| c.pid == Some(pid))
            .ok_or_else(|| NetnsError::Open {
                ns,
                source: std::io::ErrorKind::NotFound.into(),
            })?;
        f(&mut s.counts, &mut c.ns_links)?;
        Ok(c.ns_links.clone())
    }
}
