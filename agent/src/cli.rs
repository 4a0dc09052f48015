//! The command line: `agent run` (the daemon) and the commands that talk to a
//! running agent over its control socket.
//!
//! Over 400 lines: the clap definitions of every command with their help, and one
//! short printer per reply.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use futures::StreamExt;
use ipc::{JsonLines, MAX_LINE_LEN};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio_util::codec::FramedRead;

use crate::control::BUSY_PREFIX;
use crate::control::protocol::{
    Created, Deleted, Envelope, Lifecycle, Reply, Request, RuntimeList, StoreOutcome,
};
use crate::daemon::Config;
use crate::reconcile::ReconcileReport;
use crate::runtime::{CreateRequest, parse_vnic};
use crate::status::{self, HealthReport, StatusView, VnicView};

pub const DEFAULT_CONTROL_SOCKET: &str = "/run/agent/agent.sock";

#[derive(Parser, Debug)]
#[command(
    name = "agent",
    version,
    about = "Keeps runtime containers on the right MACVLAN networks as the host's LAN changes"
)]
pub struct Cli {
    /// The agent's control socket.
    #[arg(long, global = true, env = "AGENT_CONTROL_SOCKET", default_value = DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
    /// Log format: text, json or journald.
    #[arg(
        long,
        global = true,
        env = "AGENT_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: ipc::logging::LogFormat,
    /// Log level or filter (tracing env-filter syntax).
    #[arg(long, global = true, env = "AGENT_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// How long a command that needs the container engine waits for the agent to
    /// reach it (e.g. right after `agent run` starts) before failing with the reason.
    #[arg(long, global = true, env = "AGENT_WAIT", default_value = "10s", value_parser = parse_wait)]
    pub wait: Duration,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the agent daemon.
    Run(RunArgs),
    /// Reconcile now and print the steps planned or taken (exit 1 when one failed).
    Reconcile {
        /// Plan only; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the typed report as JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Links, interfaces, runtimes and their vNICs, store faults, last reconcile.
    Status {
        /// Print the status as JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Exit 0 when netmon and the engine are reachable and the store is sound.
    Health {
        /// Also fail when the cloud link is not up (it is only shown otherwise).
        #[arg(long, env = "AGENT_REQUIRE_CLOUD")]
        require_cloud: bool,
    },
    /// Make a key and a CSR (CN = ID), post it to URL/orchestrators/enroll and store
    /// the certificate (~/.mtls/client.crt, client.key 0600).
    Enroll {
        /// The cloud's enrolment service: the CSR is posted to URL/orchestrators/enroll.
        #[arg(long, env = "AGENT_ENROLL_URL")]
        url: String,
        /// This host's id in the cloud: the certificate's CN.
        #[arg(long, env = "AGENT_ID")]
        id: String,
        /// An ECDSA P-256 key instead of RSA 2048.
        #[arg(long, env = "AGENT_ENROLL_ECDSA")]
        ecdsa: bool,
        /// Where client.crt and client.key go (default ~/.mtls).
        #[arg(long, env = "AGENT_ENROLL_DIR")]
        dir: Option<PathBuf>,
        /// CA bundle for the enrolment server (default: the system trust store).
        #[arg(long, env = "AGENT_CLOUD_CA")]
        ca: Option<PathBuf>,
    },
    /// Runtime containers and their vNICs.
    #[command(subcommand)]
    Runtime(RuntimeCommand),
    /// The vNIC store.
    #[command(subcommand)]
    Store(StoreCommand),
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// netmon's socket.
    #[arg(
        long,
        env = "AGENT_NETMON_SOCKET",
        default_value = "/run/netmon/netmon.sock"
    )]
    pub netmon_socket: PathBuf,
    /// Where runtime_vnics.json lives.
    #[arg(long, env = "AGENT_STATE_DIR", default_value = "/var/lib/agent")]
    pub state_dir: PathBuf,
    /// Group allowed on the control socket besides root.
    #[arg(long, env = "AGENT_CONTROL_GROUP")]
    pub control_group: Option<String>,
    /// Engine address (unix:///path); default DOCKER_HOST, else the local socket.
    #[arg(long, env = "AGENT_DOCKER_HOST")]
    pub docker_host: Option<String>,
    /// Slow periodic reconcile, e.g. 5m.
    #[arg(long, env = "AGENT_RECONCILE_INTERVAL", default_value = "5m", value_parser = parse_interval)]
    pub reconcile_interval: Duration,
    /// `agent health` fails once a vNIC has been pending or failed this long.
    #[arg(long, env = "AGENT_HEALTH_GRACE", default_value = "10s", value_parser = parse_wait)]
    pub health_grace: Duration,
    /// The range each runtime's NAME_internal bridge gets a /28 from (not the
    /// engine's default pools, and not a range a LAN is likely to use).
    #[arg(long, env = "AGENT_INTERNAL_POOL", default_value = crate::internal_pool::DEFAULT_POOL, value_parser = crate::internal_pool::parse_pool)]
    pub internal_pool: ipnetwork::Ipv4Network,
    /// Containers handled in parallel.
    #[arg(long, env = "AGENT_PARALLELISM", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub parallelism: u16,
    /// The cloud: https://HOST[:PORT] or wss://HOST[:PORT]; absent or empty: local only.
    #[arg(long, env = "AGENT_CLOUD_URL")]
    pub cloud_url: Option<String>,
    /// Client certificate (PEM), re-read before every connection (default ~/.mtls/client.crt).
    #[arg(long, env = "AGENT_CLOUD_CERT")]
    pub cloud_cert: Option<PathBuf>,
    /// Client key (PEM, PKCS#8 or PKCS#1) (default ~/.mtls/client.key).
    #[arg(long, env = "AGENT_CLOUD_KEY")]
    pub cloud_key: Option<PathBuf>,
    /// CA bundle the cloud server is checked against (default: the system trust store).
    #[arg(long, env = "AGENT_CLOUD_CA")]
    pub cloud_ca: Option<PathBuf>,
    /// The image `create_new_runtime` runs, tagged with its runtime_version or latest.
    #[arg(
        long,
        env = "AGENT_RUNTIME_IMAGE",
        default_value = "ghcr.io/autonomy-logic/openplc-runtime"
    )]
    pub runtime_image: String,
    /// Bound on one `run_command` HTTP exchange with a runtime.
    #[arg(long, env = "AGENT_RUN_COMMAND_TIMEOUT", default_value = "30s", value_parser = parse_interval)]
    pub run_command_timeout: Duration,
    /// Run no DHCP client: DHCP vNICs get the engine's IPAM address in the LAN
    /// subnet (the older behaviour; only for a LAN without a DHCP server).
    #[arg(long, env = "AGENT_NO_DHCP_CLIENT")]
    pub no_dhcp_client: bool,
    /// Release a stopped runtime's DHCP leases (default: keep them renewed, so its
    /// addresses stay reserved for its next start).
    #[arg(long, env = "AGENT_RELEASE_WHEN_STOPPED")]
    pub release_when_stopped: bool,
    /// The longest wait between DISCOVER rounds while no DHCP server answers.
    #[arg(long, env = "AGENT_DHCP_RETRY_MAX", default_value = "120s", value_parser = parse_wait)]
    pub dhcp_retry_max: Duration,
}

#[derive(Subcommand, Debug)]
pub enum RuntimeCommand {
    /// Create a runtime container with its vNICs, start it and attach it.
    Create {
        /// Container name (also names its `NAME_internal` network).
        name: String,
        /// A local image (nothing is pulled).
        #[arg(long)]
        image: String,
        /// name=eth0,parent=ens37,mode=dhcp or
        /// name=eth1,parent=ens38,mode=static,ip=10.0.0.100,subnet=10.0.0.0/24,gateway=10.0.0.1[,mac=..]
        #[arg(long = "vnic", required = true)]
        vnics: Vec<String>,
        /// The container's command (everything after --cmd).
        #[arg(long, num_args = 1.., allow_hyphen_values = true)]
        cmd: Option<Vec<String>>,
        /// Print the reply as JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Remove the container, its internal network and its vNIC records.
    Delete {
        /// The runtime's name.
        name: String,
    },
    /// The runtimes, each vNIC with its state, MAC, network and address.
    List {
        /// Print the list as JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Start the runtime's container; answers once its vNICs are verified.
    Start {
        /// The runtime's name.
        name: String,
    },
    /// Stop the runtime's container (its vNIC records and leases stay).
    Stop {
        /// The runtime's name.
        name: String,
    },
    /// Restart the runtime's container; answers once its vNICs are verified.
    Restart {
        /// The runtime's name.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum StoreCommand {
    /// Re-read runtime_vnics.json (after an operator repaired it).
    Reload,
    /// Start from an empty store. Refused on a healthy store unless --force; the
    /// current file is always kept as runtime_vnics.json.reset-<time>.
    Reset {
        /// Forget every runtime of a healthy store.
        #[arg(long)]
        force: bool,
    },
}

fn parse_wait(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (e.g. 10s, 0s)"))
}

/// A humantime duration of at least one second (a zero interval would spin).
fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (e.g. 5m, 30s)"))?;
    if d < Duration::from_secs(1) {
        return Err(format!("{s:?}: use at least 1s"));
    }
    Ok(d)
}

impl RunArgs {
    pub fn config(&self, control_socket: &Path) -> Config {
        Config {
            netmon_socket: self.netmon_socket.clone(),
            state_dir: self.state_dir.clone(),
            control_socket: control_socket.to_path_buf(),
            control_group: self.control_group.clone(),
            docker_host: self.docker_host.clone(),
            reconcile_interval: self.reconcile_interval,
            parallelism: usize::from(self.parallelism),
            health_grace: self.health_grace,
            internal_pool: self.internal_pool,
            // Empty is unset: a deployment file passes `AGENT_CLOUD_URL=` for local only.
            cloud: self
                .cloud_url
                .as_deref()
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(|url| {
                    let mut link = crate::cloud::CloudConfig::new(url.to_string());
                    if let Some(c) = &self.cloud_cert {
                        link.cert = c.clone();
                    }
                    if let Some(k) = &self.cloud_key {
                        link.key = k.clone();
                    }
                    link.ca = self.cloud_ca.clone();
                    crate::daemon::CloudOptions {
                        link,
                        runtime_image: self.runtime_image.clone(),
                        run_command_timeout: self.run_command_timeout,
                    }
                }),
            dhcp: crate::daemon::DhcpConfig {
                client: !self.no_dhcp_client,
                release_when_stopped: self.release_when_stopped,
                retry_max: self.dhcp_retry_max,
            },
        }
    }
}

/// Sends one request and returns its typed result, or the agent's error. A socket
/// that is not there yet (the agent is starting) or a busy agent is retried until
/// `wait` has passed.
async fn call<T: serde::de::DeserializeOwned>(
    socket: &Path,
    wait: Duration,
    request: Request,
) -> Result<T> {
    let now = tokio::time::Instant::now();
    let deadline = now + wait;
    // An agent that is starting binds its socket within moments; one that is not
    // running should not keep the caller waiting for the whole --wait.
    let reach_by = now + wait.min(REACH_WAIT);
    let env = Envelope {
        id: Some(1.into()),
        wait: Some(wait),
        request,
    };
    loop {
        let (retry, until) = match exchange(socket, &env).await {
            Ok(reply) => match reply.into_result::<T>() {
                Ok(v) => return Ok(v),
                Err(e) if e.starts_with(BUSY_PREFIX) => (anyhow::anyhow!(e), deadline),
                Err(e) => bail!(e),
            },
            Err(Exchange::Connect(e)) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                bail!(
                    "permission denied on the agent's control socket {}: run as root or as a member of the agent's control group ({e})",
                    socket.display()
                )
            }
            Err(Exchange::Connect(e)) => (
                anyhow::anyhow!(
                    "cannot reach the agent at {}: is `agent run` running? ({e})",
                    socket.display()
                ),
                reach_by,
            ),
            Err(Exchange::Other(e)) => return Err(e),
        };
        let now = tokio::time::Instant::now();
        if now >= until {
            return Err(retry);
        }
        if socket.exists() {
            tokio::time::sleep(Duration::from_millis(200).min(until - now)).await;
        } else {
            ipc::client::wait_for_file(socket, until - now).await;
        }
    }
}

/// How long the CLI retries a control socket that is missing or refuses
/// connections (an agent starting up), at most.
const REACH_WAIT: Duration = Duration::from_secs(3);

enum Exchange {
    /// The socket is missing or refuses connections: worth retrying.
    Connect(std::io::Error),
    Other(anyhow::Error),
}

/// One connection, one request, one reply.
async fn exchange(socket: &Path, env: &Envelope) -> Result<Reply, Exchange> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(Exchange::Connect)?;
    let other = |e: anyhow::Error| Exchange::Other(e);
    let (r, mut w) = stream.into_split();
    let line = env.encode().map_err(|e| other(e.into()))?;
    // An agent over its client cap answers "busy" and closes before reading: the
    // write may fail, and that reply is still there to read.
    let sent = w.write_all(&line).await;
    let mut reader = FramedRead::new(r, JsonLines::new(MAX_LINE_LEN * 64));
    let line = match reader.next().await {
        Some(Ok(line)) => line,
        Some(Err(e)) => {
            return Err(other(anyhow::anyhow!(
                "read the agent's reply from {}: {e}",
                socket.display()
            )));
        }
        None => {
            return Err(match sent {
                Err(e) => Exchange::Connect(e),
                Ok(()) => other(anyhow::anyhow!(
                    "the agent at {} closed the connection",
                    socket.display()
                )),
            });
        }
    };
    serde_json::from_slice(&line)
        .context("the agent's reply")
        .map_err(other)
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Runs a client command; returns the process exit code.
pub async fn client(socket: &Path, wait: Duration, command: Command) -> Result<i32> {
    match command {
        Command::Run(_) => bail!("`agent run` is the daemon, not a client command"),
        Command::Reconcile { dry_run, json } => {
            let report: ReconcileReport =
                call(socket, wait, Request::Reconcile { dry_run }).await?;
            if json {
                print_json(&report)?;
            } else {
                print!("{report}");
            }
            Ok(i32::from(report.failed()))
        }
        Command::Status { json } => {
            let s: StatusView = call(socket, wait, Request::Status).await?;
            if json {
                print_json(&s)?;
            } else {
                print!("{}", status::render(&s));
            }
            Ok(0)
        }
        Command::Enroll {
            url,
            id,
            ecdsa,
            dir,
            ca,
        } => enroll(url, id, ecdsa, dir, ca).await,
        Command::Health { require_cloud } => {
            match call::<HealthReport>(socket, wait, Request::Health).await {
                Ok(h) if h.healthy && require_cloud => cloud_health(socket, wait).await,
                Ok(h) if h.healthy => {
                    println!("healthy");
                    Ok(0)
                }
                Ok(h) => {
                    for p in &h.problems {
                        eprintln!("unhealthy: {p}");
                    }
                    Ok(1)
                }
                Err(e) => {
                    eprintln!("unhealthy: {e:#}");
                    Ok(1)
                }
            }
        }
        Command::Runtime(r) => runtime(socket, wait, r).await,
        Command::Store(s) => {
            let (req, verb) = match s {
                StoreCommand::Reload => (Request::StoreReload, "reloaded"),
                StoreCommand::Reset { force } => (Request::StoreReset { force }, "reset"),
            };
            let out: StoreOutcome = call(socket, wait, req).await?;
            println!("store {verb}: {} runtimes", out.runtimes);
            if let Some(k) = out.kept_as {
                println!("  the previous file is kept as {k}");
            }
            Ok(0)
        }
    }
}

async fn runtime(socket: &Path, wait: Duration, r: RuntimeCommand) -> Result<i32> {
    match r {
        RuntimeCommand::Create {
            name,
            image,
            vnics,
            cmd,
            json,
        } => {
            let vnics = vnics
                .iter()
                .map(|s| parse_vnic(s))
                .collect::<Result<Vec<_>, _>>()?;
            let req = CreateRequest {
                name,
                image,
                cmd,
                vnics,
            };
            let c: Created = call(socket, wait, Request::RuntimeCreate(req)).await?;
            if json {
                print_json(&c)?;
                return Ok(0);
            }
            println!("runtime {} created", c.runtime);
            for v in &c.vnics {
                println!("  {}", vnic_line(v));
            }
            match &c.report {
                Some(r) if r.failed() => print!("attaching is not complete yet:\n{r}"),
                Some(_) => {}
                None => println!("attaching is pending: the agent retries"),
            }
            Ok(0)
        }
        RuntimeCommand::Delete { name } => {
            let d: Deleted = call(socket, wait, Request::RuntimeDelete { name }).await?;
            println!("runtime {} deleted", d.runtime);
            for n in &d.removed_networks {
                println!("  removed network {n}");
            }
            for n in &d.left_networks {
                let net = &n.network;
                println!(
                    "  left network {net}: {}\n    no runtime uses it; a container that is not the \
                     agent's may be on it (see `docker network inspect {net}`), or the engine's count \
                     of its endpoints is stale (Docker 20.10, moby/moby#43286: it clears when the \
                     engine restarts); then remove it with `docker network rm {net}`",
                    n.reason
                );
            }
            Ok(0)
        }
        RuntimeCommand::List { json } => {
            let list: RuntimeList = call(socket, wait, Request::RuntimeList).await?;
            if json {
                print_json(&list)?;
                return Ok(0);
            }
            for (name, vnics) in &list {
                println!("{name}");
                for v in vnics {
                    println!("  {}", vnic_line(v));
                }
            }
            Ok(0)
        }
        RuntimeCommand::Start { name } => {
            lifecycle(socket, wait, Request::RuntimeStart { name }).await
        }
        RuntimeCommand::Stop { name } => {
            lifecycle(socket, wait, Request::RuntimeStop { name }).await
        }
        RuntimeCommand::Restart { name } => {
            lifecycle(socket, wait, Request::RuntimeRestart { name }).await
        }
    }
}

fn vnic_line(v: &VnicView) -> String {
    format!(
        "{} on {}: {}; mac {}, network {}, ipv4 {}",
        v.name,
        v.parent,
        v.state
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_else(|| "state unknown".into()),
        v.mac.as_deref().unwrap_or("-"),
        v.network.as_deref().unwrap_or("-"),
        v.ipv4.as_deref().unwrap_or("-")
    )
}

async fn lifecycle(socket: &Path, wait: Duration, req: Request) -> Result<i32> {
    let l: Lifecycle = call(socket, wait, req).await?;
    println!("runtime {}: {} done", l.runtime, l.action);
    if let Some(report) = &l.report
        && !report.steps.is_empty()
    {
        print!("{report}");
    }
    Ok(i32::from(
        l.report.as_ref().is_some_and(ReconcileReport::failed),
    ))
}

/// `agent health --require-cloud`: healthy host and the link up.
async fn cloud_health(socket: &Path, wait: Duration) -> Result<i32> {
    let s: StatusView = call(socket, wait, Request::Status).await?;
    match &s.cloud {
        Some(c) if c.connected => {
            println!("healthy");
            Ok(0)
        }
        Some(c) => {
            let why = c.why_not.map(|w| w.to_string()).unwrap_or_default();
            eprintln!("unhealthy: the cloud link to {} is down: {why}", c.url);
            Ok(1)
        }
        None => {
            eprintln!("unhealthy: no cloud link configured (agent run --cloud-url)");
            Ok(1)
        }
    }
}

async fn enroll(
    url: String,
    id: String,
    ecdsa: bool,
    dir: Option<PathBuf>,
    ca: Option<PathBuf>,
) -> Result<i32> {
    use crate::cloud::enroll::{EnrollOptions, KeyKind};
    let mut o = EnrollOptions::new(url, id);
    if let Some(d) = dir {
        o.dir = d;
    }
    o.ca = ca;
    if ecdsa {
        o.key_kind = KeyKind::EcdsaP256;
    }
    let out = crate::cloud::enroll::enroll(o).await?;
    println!(
        "enrolled as {} (serial {}): {} and {}",
        out.agent_id,
        out.serial,
        out.cert.display(),
        out.key.display()
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_subcommand_and_option_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if !matches!(id, "help" | "version") && a.get_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                let p = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    missing.push(p.clone());
                }
                walk(sub, &p, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "agent", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:?}");
    }

    #[test]
    fn every_run_option_also_comes_from_the_environment() {
        let cmd = Cli::command();
        let run = cmd.find_subcommand("run").expect("run");
        for arg in run.get_arguments().chain(cmd.get_arguments()) {
            let id = arg.get_id().as_str();
            if matches!(id, "help" | "version") {
                continue;
            }
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
            assert!(
                env.as_deref().is_some_and(|e| e.starts_with("AGENT_")),
                "--{id} has no AGENT_ environment variable"
            );
        }
    }

    #[test]
    fn parses_create_and_rejects_bad_intervals() {
        let cli = Cli::try_parse_from([
            "agent",
            "runtime",
            "create",
            "rt",
            "--image",
            "img",
            "--vnic",
            "name=eth0,parent=ens37,mode=dhcp",
            "--vnic",
            "name=eth1,parent=ens38,mode=static,ip=10.0.0.100,subnet=10.0.0.0/24",
            "--cmd",
            "sleep",
            "1000",
        ])
        .unwrap();
        match cli.command {
            Command::Runtime(RuntimeCommand::Create { vnics, cmd, .. }) => {
                assert_eq!(vnics.len(), 2);
                assert_eq!(cmd, Some(vec!["sleep".to_string(), "1000".to_string()]));
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["agent", "run", "--reconcile-interval", "0s"]).is_err());
        assert!(Cli::try_parse_from(["agent", "run", "--parallelism", "0"]).is_err());
        let config = |args: &[&str]| match Cli::try_parse_from(args).unwrap().command {
            Command::Run(r) => r.config(Path::new("/run/agent/agent.sock")),
            other => panic!("{other:?}"),
        };
        // An empty URL (compose's `AGENT_CLOUD_URL: ${EDGENET_CLOUD_URL:-}`) is local only.
        assert!(config(&["agent", "run", "--cloud-url", ""]).cloud.is_none());
        assert!(
            config(&["agent", "run", "--cloud-url", " "])
                .cloud
                .is_none()
        );
        let linked = config(&["agent", "run", "--cloud-url", "https://cloud.example:8443"]);
        assert!(linked.cloud.is_some());
        let ok = Cli::try_parse_from(["agent", "run", "--reconcile-interval", "90s"]).unwrap();
        match ok.command {
            Command::Run(r) => assert_eq!(r.reconcile_interval, Duration::from_secs(90)),
            other => panic!("{other:?}"),
        }
    }
}
