//! The command line: `agent run` (the daemon) and the commands that talk to a
//! running agent over its control socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use ipc::{Connection, Reply, Request};
use serde_json::Value;

use crate::daemon::Config;
use crate::runtime::{CreateRequest, parse_vnic};
use crate::status::{self, StatusView};

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
        #[arg(long)]
        json: bool,
    },
    /// Links, interfaces, runtimes and their vNICs, store faults, last reconcile.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Exit 0 when netmon and the engine are reachable and the store is sound.
    Health,
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
    /// Containers handled in parallel.
    #[arg(long, env = "AGENT_PARALLELISM", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub parallelism: u16,
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
        #[arg(long)]
        json: bool,
    },
    /// Remove the container, its internal network and its vNIC records.
    Delete {
        name: String,
    },
    List {
        #[arg(long)]
        json: bool,
    },
    Start {
        name: String,
    },
    Stop {
        name: String,
    },
    Restart {
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum StoreCommand {
    /// Re-read runtime_vnics.json (after an operator repaired it).
    Reload,
    /// Start from an empty store (the faulted file stays moved aside).
    Reset,
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
        }
    }
}

/// Sends one request and returns the reply; a refused or failed request is an error
/// with the agent's reason.
async fn call(socket: &Path, req: Request) -> Result<Reply> {
    let mut conn = Connection::connect(socket).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot reach the agent at {}: is `agent run` running? ({e})",
            socket.display()
        )
    })?;
    let reply = conn
        .request(req)
        .await
        .with_context(|| format!("talking to the agent at {}", socket.display()))?;
    if !reply.success {
        bail!(
            "{}",
            reply
                .error
                .unwrap_or_else(|| "the agent refused the request".into())
        );
    }
    Ok(reply)
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Runs a client command; returns the process exit code.
pub async fn client(socket: &Path, command: Command) -> Result<i32> {
    match command {
        Command::Run(_) => bail!("`agent run` is the daemon, not a client command"),
        Command::Reconcile { dry_run, json } => {
            let reply = call(
                socket,
                Request::new("reconcile").with_arg("dry_run", dry_run),
            )
            .await?;
            let report = reply.extra.get("report").cloned().unwrap_or(Value::Null);
            if json {
                print_json(&report)?;
            } else {
                print!("{}", status::render_report(&report));
            }
            let failed = reply.extra.get("failed") == Some(&Value::Bool(true));
            Ok(i32::from(failed))
        }
        Command::Status { json } => {
            let reply = call(socket, Request::new("status")).await?;
            let v = reply.extra.get("status").cloned().unwrap_or(Value::Null);
            if json {
                print_json(&v)?;
            } else {
                let s: StatusView =
                    serde_json::from_value(v).context("the agent's status reply")?;
                print!("{}", status::render(&s));
            }
            Ok(0)
        }
        Command::Health => {
            let reply = match call(socket, Request::new("health")).await {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("unhealthy: {e:#}");
                    return Ok(1);
                }
            };
            let problems: Vec<String> = reply
                .extra
                .get("problems")
                .and_then(|p| serde_json::from_value(p.clone()).ok())
                .unwrap_or_default();
            if problems.is_empty() {
                println!("healthy");
                Ok(0)
            } else {
                for p in &problems {
                    eprintln!("unhealthy: {p}");
                }
                Ok(1)
            }
        }
        Command::Runtime(r) => runtime(socket, r).await,
        Command::Store(s) => {
            let cmd = match s {
                StoreCommand::Reload => "store_reload",
                StoreCommand::Reset => "store_reset",
            };
            let reply = call(socket, Request::new(cmd)).await?;
            println!(
                "store {}: {} runtimes",
                if cmd == "store_reload" {
                    "reloaded"
                } else {
                    "reset"
                },
                reply.extra.get("runtimes").cloned().unwrap_or(Value::Null)
            );
            Ok(0)
        }
    }
}

async fn runtime(socket: &Path, r: RuntimeCommand) -> Result<i32> {
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
                name: name.clone(),
                image,
                cmd,
                vnics,
            };
            let Value::Object(args) = serde_json::to_value(&req)? else {
                bail!("internal: a create request is an object");
            };
            let mut request = Request::new("runtime_create");
            request.args = args;
            let reply = call(socket, request).await?;
            let report = reply.extra.get("report").cloned().unwrap_or(Value::Null);
            if json {
                print_json(&reply.extra)?;
            } else {
                println!("runtime {name} created");
                // The attach may have been done by the run the container's start
                // triggered: show where each vNIC is now rather than only this
                // run's steps.
                let now = call(socket, Request::new("status")).await.ok();
                let vnics = now
                    .as_ref()
                    .and_then(|r| r.extra.get("status"))
                    .and_then(|s| s.get("runtimes"))
                    .and_then(|r| r.get(&name))
                    .or_else(|| reply.extra.get("vnics").and_then(|v| v.get(&name)))
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                for n in &vnics {
                    let f = |k: &str| n.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
                    println!(
                        "  {} on {}: mac {}, network {}, ipv4 {}",
                        f("name"),
                        f("parent"),
                        f("mac"),
                        f("network"),
                        f("ipv4")
                    );
                }
                if report
                    .get("steps")
                    .and_then(Value::as_array)
                    .is_some_and(|s| !s.is_empty())
                {
                    print!("{}", status::render_report(&report));
                }
            }
            Ok(i32::from(
                reply.extra.get("failed") == Some(&Value::Bool(true)),
            ))
        }
        RuntimeCommand::Delete { name } => {
            let reply = call(
                socket,
                Request::new("runtime_delete").with_arg("name", name.clone()),
            )
            .await?;
            println!("runtime {name} deleted");
            if let Some(Value::Array(nets)) = reply.extra.get("removed_networks") {
                for n in nets {
                    println!("  removed network {}", n.as_str().unwrap_or("?"));
                }
            }
            Ok(0)
        }
        RuntimeCommand::List { json } => {
            let reply = call(socket, Request::new("runtime_list")).await?;
            let v = reply.extra.get("runtimes").cloned().unwrap_or(Value::Null);
            if json {
                print_json(&v)?;
            } else {
                let s = StatusView {
                    runtimes: serde_json::from_value(v).context("the agent's list reply")?,
                    ..Default::default()
                };
                for (name, vnics) in &s.runtimes {
                    println!("{name}");
                    for v in vnics {
                        println!(
                            "  {:<6} parent {:<12} net {:<32} mac {}",
                            v.name,
                            v.parent,
                            v.network.as_deref().unwrap_or("-"),
                            v.mac.as_deref().unwrap_or("-")
                        );
                    }
                }
            }
            Ok(0)
        }
        RuntimeCommand::Start { name } => lifecycle(socket, "start", name).await,
        RuntimeCommand::Stop { name } => lifecycle(socket, "stop", name).await,
        RuntimeCommand::Restart { name } => lifecycle(socket, "restart", name).await,
    }
}

async fn lifecycle(socket: &Path, verb: &str, name: String) -> Result<i32> {
    let reply = call(
        socket,
        Request::new(format!("runtime_{verb}")).with_arg("name", name.clone()),
    )
    .await?;
    println!("runtime {name}: {verb} done");
    if let Some(report) = reply.extra.get("report") {
        print!("{}", status::render_report(report));
    }
    Ok(i32::from(
        reply.extra.get("failed") == Some(&Value::Bool(true)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

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
        let ok = Cli::try_parse_from(["agent", "run", "--reconcile-interval", "90s"]).unwrap();
        match ok.command {
            Command::Run(r) => assert_eq!(r.reconcile_interval, Duration::from_secs(90)),
            other => panic!("{other:?}"),
        }
    }
}
