//! [`Engine`] for [`Docker`]: each call forwards to the inherent method of that name.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use ipc::MacAddr;
use ipnetwork::Ipv4Network;

use super::Docker;
use crate::engine::{
    CallCounts, ContainerInfo, ContainerSpec, Engine, EngineError, EngineEvent, EngineFuture,
    EngineVersion, NetworkInfo, NetworkSpec, NsLink, Observed,
};
use crate::engine::{ContainerDetails, ContainerStats};
use crate::netns::{self, Netns, NetnsError};

impl Engine for Docker {
    fn host(&self) -> String {
        format!("unix://{}", self.socket())
    }
    fn counts(&self) -> CallCounts {
        Docker::counts(self)
    }
    fn version(&self) -> EngineFuture<'_, EngineVersion> {
        Docker::version(self).boxed()
    }
    fn observe_engine<'a>(&'a self, containers: &'a [String]) -> EngineFuture<'a, Observed> {
        Docker::observe_engine(self, containers).boxed()
    }
    fn observe_reusing<'a>(
        &'a self,
        containers: &'a [String],
        known: &'a BTreeMap<String, ContainerInfo>,
    ) -> EngineFuture<'a, Observed> {
        Docker::observe_reusing(self, containers, known).boxed()
    }
    fn read_links_of<'a>(
        &'a self,
        observed: &'a mut Observed,
        names: &'a BTreeSet<String>,
    ) -> BoxFuture<'a, ()> {
        Docker::read_links_of(self, observed, names).boxed()
    }
    fn container<'a>(&'a self, name: &'a str) -> EngineFuture<'a, Option<ContainerInfo>> {
        Docker::container(self, name).boxed()
    }
    fn list_networks(&self) -> EngineFuture<'_, Vec<NetworkInfo>> {
        Docker::list_networks(self).boxed()
    }
    fn list_managed_containers(&self) -> EngineFuture<'_, Vec<String>> {
        Docker::list_managed_containers(self).boxed()
    }
    fn create_network<'a>(&'a self, spec: &'a NetworkSpec) -> EngineFuture<'a, String> {
        Docker::create_network(self, spec).boxed()
    }
    fn create_internal_network<'a>(
        &'a self,
        name: &'a str,
        subnet: Ipv4Network,
        labels: &'a BTreeMap<String, String>,
    ) -> EngineFuture<'a, String> {
        Docker::create_internal_network(self, name, subnet, labels).boxed()
    }
    fn remove_network<'a>(&'a self, name_or_id: &'a str) -> EngineFuture<'a, ()> {
        Docker::remove_network(self, name_or_id).boxed()
    }
    fn connect<'a>(
        &'a self,
        container: &'a str,
        network: &'a str,
        ipv4: Option<Ipv4Addr>,
        mac: Option<MacAddr>,
    ) -> EngineFuture<'a, ()> {
        Docker::connect(self, container, network, ipv4, mac).boxed()
    }
    fn disconnect<'a>(&'a self, container: &'a str, network: &'a str) -> EngineFuture<'a, ()> {
        Docker::disconnect(self, container, network).boxed()
    }
    fn create_container<'a>(&'a self, spec: &'a ContainerSpec) -> EngineFuture<'a, String> {
        Docker::create_container(self, spec).boxed()
    }
    fn start_container<'a>(&'a self, name: &'a str) -> EngineFuture<'a, ()> {
        Docker::start_container(self, name).boxed()
    }
    fn stop_container<'a>(&'a self, name: &'a str) -> EngineFuture<'a, ()> {
        Docker::stop_container(self, name).boxed()
    }
    fn restart_container<'a>(&'a self, name: &'a str) -> EngineFuture<'a, ()> {
        Docker::restart_container(self, name).boxed()
    }
    fn remove_container<'a>(&'a self, name: &'a str) -> EngineFuture<'a, ()> {
        Docker::remove_container(self, name).boxed()
    }
    fn events(&self) -> BoxStream<'static, Result<EngineEvent, EngineError>> {
        Docker::events(self).boxed()
    }
    fn set_mac_inside<'a>(
        &'a self,
        pid: u32,
        ifname: &'a str,
        mac: MacAddr,
    ) -> BoxFuture<'a, Result<Vec<NsLink>, NetnsError>> {
        self.count_mac_set();
        netns::set_mac(Netns::Pid(pid), ifname, mac).boxed()
    }

    // The cloud's reads and the runtime image (see `details.rs`).
    fn details<'a>(&'a self, n: &'a str) -> EngineFuture<'a, Option<ContainerDetails>> {
        Docker::details(self, n).boxed()
    }
    fn stats<'a>(&'a self, n: &'a str) -> EngineFuture<'a, Option<ContainerStats>> {
        Docker::stats(self, n).boxed()
    }
    fn pull_image<'a>(&'a self, image: &'a str) -> EngineFuture<'a, ()> {
        Docker::pull_image(self, image).boxed()
    }
    fn image_exists<'a>(&'a self, image: &'a str) -> EngineFuture<'a, bool> {
        Docker::image_exists(self, image).boxed()
    }

    fn name_inside(
        &self,
        pid: u32,
        wants: Vec<crate::netns::NameWant>,
    ) -> BoxFuture<'_, Result<Vec<NsLink>, NetnsError>> {
        self.count_rename();
        if wants.iter().any(|w| w.mac.is_some()) {
            self.count_mac_set();
        }
        netns::name_links(Netns::Pid(pid), wants).boxed()
    }
    fn links_inside(&self, pid: u32) -> BoxFuture<'_, Result<Vec<NsLink>, NetnsError>> {
        self.count_mac_check();
        netns::read_links(Netns::Pid(pid)).boxed()
    }
    fn give_back_inside(
        &self,
        pid: u32,
        endpoint: String,
        ip: Option<std::net::Ipv4Addr>,
    ) -> BoxFuture<'_, Result<netns::GaveBack, NetnsError>> {
        self.count_mac_check();
        async move {
            let r = netns::give_back_name(Netns::Pid(pid), endpoint, ip).await;
            if let Ok(netns::GaveBack::Renamed(..)) = &r {
                self.count_rename();
            }
            r
        }
        .boxed()
    }
    fn delete_inside(
        &self,
        pid: u32,
        index: u32,
    ) -> BoxFuture<'_, Result<Vec<NsLink>, NetnsError>> {
        self.count_rename();
        netns::delete_link(Netns::Pid(pid), index).boxed()
    }
}
