//! What the agent's benchmarks share (through `#[path]`): the shell helper, the
//! busybox runtime image, and running engine calls with a bound on those in flight.

use std::process::Command;

use anyhow::{Context, Result, bail};
use futures::StreamExt;

pub const IMAGE: &str = "edgenet-agent-bench-busybox:1";

pub fn sh(cmd: &str) -> Result<String> {
    let out = Command::new("sh").arg("-c").arg(cmd).output()?;
    if !out.status.success() {
        bail!(
            "`{cmd}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The busybox image the runtimes run (made by `docker import`, nothing is pulled).
pub fn ensure_image() -> Result<()> {
    if sh(&format!("docker image inspect {IMAGE} >/dev/null 2>&1")).is_ok() {
        return Ok(());
    }
    let dir = std::env::temp_dir().join(format!("edgenet-bench-img-{}", std::process::id()));
    let r = dir.display();
    sh(&format!(
        "rm -rf {r} && mkdir -p {r}/bin {r}/proc {r}/sys {r}/dev {r}/etc {r}/tmp && cp /bin/busybox {r}/bin/ && \
         for a in sh ip sleep; do ln -sf busybox {r}/bin/$a; done && \
         tar -C {r} -c . | docker import -c 'CMD [\"/bin/sleep\",\"100000\"]' - {IMAGE} >/dev/null && rm -rf {r}"
    ))
    .context("build the busybox image (apt-get install busybox-static)")?;
    Ok(())
}

/// `f` on every item, `parallelism` at once; the first error fails all.
pub async fn each<'a, T, F, Fut>(items: &'a [T], parallelism: usize, f: F) -> Result<()>
where
    F: Fn(&'a T) -> Fut,
    Fut: std::future::Future<Output = Result<(), agent::engine::EngineError>>,
{
    let r: Vec<Result<(), _>> = futures::stream::iter(items.iter())
        .map(f)
        .buffer_unordered(parallelism)
        .collect()
        .await;
    r.into_iter().collect::<Result<Vec<()>, _>>()?;
    Ok(())
}
