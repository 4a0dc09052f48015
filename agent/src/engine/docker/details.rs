//! The cloud's reads (container details, one-shot stats) and the runtime image (pull,
//! local check), converted to our types here so bollard stays in this module.

use bollard::errors::Error as BError;
use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::{CreateImageOptions, StatsOptions};
use futures::StreamExt;

use super::{Docker, bump};
use crate::engine::{ContainerDetails, ContainerStats, EngineError, NetworkAddress};

/// How long a pull may take before it counts as failed (no registry: it fails fast).
const PULL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

fn details_of(r: ContainerInspectResponse) -> ContainerDetails {
    let st = r.state.unwrap_or_default();
    let status = st
        .status
        .map(|s| s.to_string())
        .unwrap_or_else(|| "unknown".into());
    let started = non_empty(st.started_at).filter(|s| !s.starts_with("0001-"));
    let networks = r
        .network_settings
        .and_then(|n| n.networks)
        .unwrap_or_default()
        .into_iter()
        .map(|(name, e)| {
            let a = NetworkAddress {
                ip_address: non_empty(e.ip_address),
                mac_address: non_empty(e.mac_address),
                gateway: non_empty(e.gateway),
            };
            (name, a)
        })
        .collect();
    let hc = r.host_config.unwrap_or_default();
    ContainerDetails {
        running: st.running.unwrap_or(false),
        status,
        restart_count: r.restart_count.unwrap_or(0).max(0) as u64,
        exit_code: started.as_ref().and(st.exit_code),
        started_at: started,
        health: st
            .health
            .and_then(|h| h.status)
            .map(|s| s.to_string())
            .filter(|s| !s.is_empty() && s != "none"),
        networks,
        memory_limit: hc.memory.unwrap_or(0).max(0) as u64,
        nano_cpus: hc.nano_cpus.unwrap_or(0).max(0) as u64,
    }
}

impl Docker {
    pub async fn details(&self, name: &str) -> Result<Option<ContainerDetails>, EngineError> {
        let c = self.client().await?;
        bump(&self.inner.counters.reads);
        match c.inspect_container(name, None).await {
            Ok(r) => Ok(Some(details_of(r))),
            Err(BError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(self.fail(&format!("inspect container {name}"), e).await),
        }
    }

    /// One reading, without the engine's wait for a second sample (`one-shot`).
    pub async fn stats(&self, name: &str) -> Result<Option<ContainerStats>, EngineError> {
        let c = self.client().await?;
        bump(&self.inner.counters.reads);
        let opts = StatsOptions {
            stream: false,
            one_shot: true,
        };
        let mut s = c.stats(name, Some(opts));
        match s.next().await {
            Some(Ok(r)) => {
                let cpu = r.cpu_stats.unwrap_or_default();
                Ok(Some(ContainerStats {
                    cpu_total_ns: cpu.cpu_usage.and_then(|u| u.total_usage).unwrap_or(0),
                    system_ns: cpu.system_cpu_usage.unwrap_or(0),
                    online_cpus: cpu.online_cpus.unwrap_or(0),
                    memory_bytes: r.memory_stats.and_then(|m| m.usage).unwrap_or(0),
                }))
            }
            Some(Err(BError::DockerResponseServerError {
                status_code: 404, ..
            })) => Ok(None),
            Some(Err(e)) => Err(self.fail(&format!("stats of container {name}"), e).await),
            None => Err(EngineError::Protocol(format!(
                "stats of container {name}: the engine sent nothing"
            ))),
        }
    }

    /// Pulls `image`; the engine reports a failed pull inside the stream, as an error item.
    pub async fn pull_image(&self, image: &str) -> Result<(), EngineError> {
        let c = self.client().await?;
        bump(&self.inner.counters.reads);
        let (repo, tag) = split_image(image);
        let opts = CreateImageOptions {
            from_image: Some(repo.to_owned()),
            tag: Some(tag.to_owned()),
            ..Default::default()
        };
        let pull = async {
            let mut s = c.create_image(Some(opts), None, None);
            while let Some(item) = s.next().await {
                item?;
            }
            Ok(())
        };
        match tokio::time::timeout(PULL_TIMEOUT, pull).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.fail(&format!("pull image {image}"), e).await),
            Err(_) => Err(EngineError::Api {
                status: 504,
                message: format!("pull image {image}: no answer in {PULL_TIMEOUT:?}"),
            }),
        }
    }

    pub async fn image_exists(&self, image: &str) -> Result<bool, EngineError> {
        let c = self.client().await?;
        bump(&self.inner.counters.reads);
        match c.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(BError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(e) => Err(self.fail(&format!("inspect image {image}"), e).await),
        }
    }
}

/// `repo[:tag]` with the tag after the last `/` (a registry port is not a tag).
pub fn split_image(image: &str) -> (&str, &str) {
    match image.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (image, "latest"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn image_tags() {
        use super::split_image;
        assert_eq!(split_image("a/b:1.2"), ("a/b", "1.2"));
        assert_eq!(split_image("reg:5000/a/b"), ("reg:5000/a/b", "latest"));
        assert_eq!(split_image("reg:5000/a:x"), ("reg:5000/a", "x"));
    }
}
