//! Container changes and the engine's event stream.

use std::collections::HashMap;

use bollard::errors::Error as BError;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, EventsOptions, ListContainersOptions, RemoveContainerOptions,
    RestartContainerOptions, StopContainerOptions,
};
use futures::{Stream, StreamExt};

use super::convert::event_of;
use super::{Docker, bump, classify};
use crate::engine::{ContainerSpec, EngineError, EngineEvent};

impl Docker {
    pub async fn create_container(&self, spec: &ContainerSpec) -> Result<String, EngineError> {
        let c = self.client().await?;
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: spec.cmd.clone(),
            env: (!spec.env.is_empty()).then(|| spec.env.clone()),
            labels: Some(spec.labels.clone().into_iter().collect()),
            host_config: Some(HostConfig {
                network_mode: spec.network.clone(),
                cap_add: (!spec.cap_add.is_empty()).then(|| spec.cap_add.clone()),
                ..Default::default()
            }),
            ..Default::default()
        };
        bump(&self.inner.counters.container_changes);
        let opts = CreateContainerOptions {
            name: Some(spec.name.clone()),
            platform: String::new(),
        };
        match c.create_container(Some(opts), body).await {
            Ok(r) => Ok(r.id),
            Err(e) => Err(self
                .fail(&format!("create container {}", spec.name), e)
                .await),
        }
    }

    /// Starts a container; already running is success.
    pub async fn start_container(&self, name: &str) -> Result<(), EngineError> {
        let c = self.client().await?;
        bump(&self.inner.counters.container_changes);
        match c.start_container(name, None).await {
            Ok(())
            | Err(BError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(self.fail(&format!("start container {name}"), e).await),
        }
    }

    /// Stops a container; already stopped is success.
    pub async fn stop_container(&self, name: &str) -> Result<(), EngineError> {
        let c = self.client().await?;
        bump(&self.inner.counters.container_changes);
        match c
            .stop_container(
                name,
                Some(StopContainerOptions {
                    signal: None,
                    t: Some(10),
                }),
            )
            .await
        {
            Ok(())
            | Err(BError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(self.fail(&format!("stop container {name}"), e).await),
        }
    }

    pub async fn restart_container(&self, name: &str) -> Result<(), EngineError> {
        let c = self.client().await?;
        bump(&self.inner.counters.container_changes);
        match c
            .restart_container(
                name,
                Some(RestartContainerOptions {
                    signal: None,
                    t: Some(10),
                }),
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(e) => Err(self.fail(&format!("restart container {name}"), e).await),
        }
    }

    /// Removes a container (forced); already gone is success.
    pub async fn remove_container(&self, name: &str) -> Result<(), EngineError> {
        let c = self.client().await?;
        bump(&self.inner.counters.container_changes);
        let opts = RemoveContainerOptions {
            v: false,
            force: true,
            link: false,
        };
        match c.remove_container(name, Some(opts)).await {
            Ok(())
            | Err(BError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(self.fail(&format!("remove container {name}"), e).await),
        }
    }

    /// Names of the containers carrying the managed label, running or not.
    pub async fn list_managed_containers(&self) -> Result<Vec<String>, EngineError> {
        let c = self.client().await?;
        bump(&self.inner.counters.reads);
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{}=true", crate::engine::MANAGED_LABEL)],
        )]);
        let opts = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        match c.list_containers(Some(opts)).await {
            Ok(list) => {
                let mut names: Vec<String> = list
                    .into_iter()
                    .filter_map(|s| s.names?.into_iter().next())
                    .map(|n| n.trim_start_matches('/').to_string())
                    .collect();
                names.sort();
                Ok(names)
            }
            Err(e) => Err(self.fail("list containers", e).await),
        }
    }

    /// The engine's container start/destroy and network destroy events. Subscribe
    /// first, then list: nothing that happens in between is missed. The request is
    /// sent on the stream's first poll (bollard exposes no "subscribed" signal), so poll
    /// it once, e.g. under a short timeout, before listing.
    pub fn events(&self) -> impl Stream<Item = Result<EngineEvent, EngineError>> + Send + 'static {
        let this = self.clone();
        futures::stream::once(async move {
            let filters = HashMap::from([
                (
                    "type".to_string(),
                    vec!["container".to_string(), "network".to_string()],
                ),
                (
                    "event".to_string(),
                    ["start", "die", "destroy", "connect", "disconnect"]
                        .map(String::from)
                        .to_vec(),
                ),
            ]);
            let opts = EventsOptions {
                filters: Some(filters),
                ..Default::default()
            };
            match this.client().await {
                Ok(c) => {
                    let socket = this.inner.socket.clone();
                    let that = this.clone();
                    c.events(Some(opts))
                        .then(move |r| {
                            let socket = socket.clone();
                            let that = that.clone();
                            async move {
                                match r {
                                    Ok(m) => Ok(event_of(m)),
                                    Err(e) => {
                                        let err = classify(&socket, "engine events", e);
                                        if err.is_unreachable() {
                                            *that.inner.client.lock().await = None;
                                        }
                                        Err(err)
                                    }
                                }
                            }
                        })
                        .boxed()
                }
                Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
            }
        })
        .flatten()
    }
}
