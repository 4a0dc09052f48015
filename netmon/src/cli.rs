//! The command line. Every option can also come from a `NETMON_*` environment
//! variable (systemd `Environment=` / container env).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ipc::logging::LogFormat;

use ipc::ServerConfig;

use crate::daemon::Config;

pub const DEFAULT_SOCKET: &str = "/run/netmon/netmon.sock";

/// Host network monitor: watches the kernel's links, addresses and default routes
/// over rtnetlink and serves the state as JSON-lines events on a Unix socket.
///
/// Without a subcommand netmon runs as the daemon. Each client first receives a
/// `network_discovery` with every reported interface, then one `network_change` per
/// interface whose state really changed: after the interface has been quiet for
/// --debounce (at the latest --max-wait after its first change), or at once when a
/// link goes down or disappears. See PROTOCOL.md for the wire format.
#[derive(Parser, Debug)]
#[command(name = "netmon", version, about, long_about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub daemon: DaemonArgs,

    #[command(flatten)]
    pub log: LogArgs,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Args, Debug, Clone)]
pub struct LogArgs {
    /// Log output: `text` (stderr), `json` (one object per line on stderr) or
    /// `journald` (native journal fields).
    #[arg(long, env = "NETMON_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// Log level or filter (`info`, `debug`, `netmon=trace`); RUST_LOG overrides it.
    #[arg(long, env = "NETMON_LOG_LEVEL", default_value = "info", global = true)]
    pub log_level: String,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 3s, 500ms, 5m)"))?;
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

fn parse_mode(s: &str) -> Result<u32, String> {
    let m = u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .map_err(|_| format!("{s:?} is not an octal mode such as 0660"))?;
    if m > 0o777 {
        return Err(format!(
            "{s:?}: only permission bits (at most 0777) are allowed"
        ));
    }
    Ok(m)
}

#[derive(Args, Debug, Clone)]
pub struct DaemonArgs {
    /// Path of the Unix socket to serve; its directory must exist.
    #[arg(long, env = "NETMON_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,

    /// Quiet time an interface needs before its change is reported.
    #[arg(long, env = "NETMON_DEBOUNCE", default_value = "3s", value_parser = parse_duration)]
    pub debounce: Duration,

    /// Longest delay between an interface's first change and its report, for links
    /// that never settle.
    #[arg(long, env = "NETMON_MAX_WAIT", default_value = "10s", value_parser = parse_duration)]
    pub max_wait: Duration,

    /// Period of the full re-read that catches anything netlink did not announce.
    #[arg(long, env = "NETMON_RESYNC_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub resync_interval: Duration,

    /// Permissions of the socket file (octal).
    #[arg(long, env = "NETMON_SOCKET_MODE", default_value = "0660", value_parser = parse_mode)]
    pub socket_mode: u32,

    /// Group owning the socket file, so its members may connect.
    #[arg(long, env = "NETMON_SOCKET_GROUP")]
    pub socket_group: Option<String>,

    /// Report only interfaces matching this glob (repeatable; `eth*`, `ens[0-9]*`).
    /// An included name is reported even if a default exclusion matches it.
    #[arg(long, env = "NETMON_INCLUDE", value_delimiter = ',')]
    pub include: Vec<String>,

    /// Never report interfaces matching this glob (repeatable), in addition to the
    /// defaults (lo, docker*, br-*, veth*, virbr*, tailscale*, zt*, cni*, flannel*,
    /// kube-ipvs*, wg*, cilium*, macvtap*, sit*).
    #[arg(long, env = "NETMON_EXCLUDE", value_delimiter = ',')]
    pub exclude: Vec<String>,

    /// Bytes of events a client may owe before it is disconnected for not reading
    /// (`4MiB`, `512KiB`, or a number of bytes). Events are shared between clients,
    /// so this bounds how far a client may fall behind, not a copy per client. The
    /// first event of an empty queue (a large discovery) always goes.
    #[arg(long, env = "NETMON_CLIENT_QUEUE_BYTES", default_value = "4MiB", value_parser = parse_size)]
    pub client_queue_bytes: usize,

    /// Clients served at once; the next one is told "busy" and closed.
    #[arg(long, env = "NETMON_MAX_CLIENTS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_clients: u64,
}

/// A byte count: a number with an optional `KiB`, `MiB` or `GiB` suffix.
fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, ""),
    };
    let mult: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        other => {
            return Err(format!(
                "unknown unit {other:?} (examples: 4MiB, 512KiB, 65536)"
            ));
        }
    };
    let n: usize = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size such as 4MiB"))?;
    match n.checked_mul(mult) {
        Some(0) => Err("must be more than zero".into()),
        Some(v) => Ok(v),
        None => Err(format!("{s:?} is too large")),
    }
}

impl DaemonArgs {
    pub fn config(&self) -> Config {
        Config {
            socket: ServerConfig {
                path: self.socket.clone(),
                mode: self.socket_mode,
                group: self.socket_group.clone(),
                max_clients: self.max_clients as usize,
                idle_timeout: None,
            },
            client_queue_bytes: self.client_queue_bytes,
            debounce: self.debounce,
            max_wait: self.max_wait,
            resync_interval: self.resync_interval,
            include: self.include.clone(),
            exclude: self.exclude.clone(),
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Checks that a netmon answers on the socket with a discovery (exit 0), else
    /// prints why and exits 1. For health checks and probes.
    Health {
        /// Path of the netmon socket to ask.
        #[arg(long, env = "NETMON_SOCKET", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        /// How long to wait for the discovery.
        #[arg(long, env = "NETMON_HEALTH_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Reads the kernel once and prints what netmon would report (no daemon needed).
    Dump {
        /// Print the `network_discovery` event as JSON instead of a table.
        #[arg(long, env = "NETMON_JSON")]
        json: bool,
        /// Report only interfaces matching this glob (repeatable).
        #[arg(long, env = "NETMON_INCLUDE", value_delimiter = ',')]
        include: Vec<String>,
        /// Also exclude interfaces matching this glob (repeatable).
        #[arg(long, env = "NETMON_EXCLUDE", value_delimiter = ',')]
        exclude: Vec<String>,
    },
    /// Follows a running netmon and prints one line per event; waits for the
    /// socket when netmon is not running yet, and reconnects when it restarts.
    Watch {
        /// Path of the netmon socket to follow.
        #[arg(long, env = "NETMON_SOCKET", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Print the raw JSON lines, exactly as netmon sends them.
        #[arg(long, env = "NETMON_JSON")]
        json: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every subcommand and every option (but clap's own --help/--version) says
    /// what it is for in `--help`.
    #[test]
    fn every_subcommand_and_option_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if id != "help" && id != "version" && a.get_help().is_none() {
                    missing.push(format!("{path} --{id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                let p = format!("{path} {}", sub.get_name());
                if sub.get_name() != "help" && sub.get_about().is_none() {
                    missing.push(p.clone());
                }
                walk(sub, &p, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "netmon", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:?}");
    }

    #[test]
    fn defaults_and_values() {
        let cli = Cli::try_parse_from(["netmon"]).unwrap();
        let c = cli.daemon.config();
        assert_eq!(c.debounce, Duration::from_secs(3));
        assert_eq!(c.max_wait, Duration::from_secs(10));
        assert_eq!(c.resync_interval, Duration::from_secs(300));
        assert_eq!(c.socket.mode, 0o660);
        assert_eq!(c.socket.path, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(c.socket.max_clients, 1000);
        assert_eq!(c.client_queue_bytes, 4 << 20);
        let cli = Cli::try_parse_from([
            "netmon",
            "--debounce",
            "1s",
            "--socket-mode",
            "0600",
            "--include",
            "eth*",
            "--include",
            "ens*",
        ])
        .unwrap();
        let c = cli.daemon.config();
        assert_eq!(c.debounce, Duration::from_secs(1));
        let cli = Cli::try_parse_from([
            "netmon",
            "--max-clients",
            "5",
            "--client-queue-bytes",
            "64KiB",
        ])
        .unwrap();
        assert_eq!(cli.daemon.config().socket.max_clients, 5);
        assert_eq!(cli.daemon.config().client_queue_bytes, 65536);
        assert_eq!(c.socket.mode, 0o600);
        assert_eq!(c.include, vec!["eth*".to_string(), "ens*".to_string()]);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(Cli::try_parse_from(["netmon", "--debounce", "soon"]).is_err());
        assert!(Cli::try_parse_from(["netmon", "--debounce", "0s"]).is_err());
        assert!(Cli::try_parse_from(["netmon", "--socket-mode", "999"]).is_err());
        assert!(Cli::try_parse_from(["netmon", "--socket-mode", "7777"]).is_err());
        assert!(Cli::try_parse_from(["netmon", "--max-clients", "0"]).is_err());
        for bad in ["0", "4XB", "lots", "99999999999999999999GiB"] {
            assert!(
                Cli::try_parse_from(["netmon", "--client-queue-bytes", bad]).is_err(),
                "{bad}"
            );
        }
    }
}
