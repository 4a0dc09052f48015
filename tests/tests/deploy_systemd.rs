//! The units under a real systemd (PID 1 in a container, see `e2e::systemd`), with
//! the project's .deb installed the way a user installs it: boot order, socket and
//! directory modes, health commands by who may use them, restarts after `kill -9`,
//! netmon stopped and started again under a running agent, sockets removed on
//! stop, the sandboxing scores, purge and reinstall, and the watchdog.
//!
//! The agent's runtime work (MACs, DHCP, runtimes' namespaces) cannot be exercised
//! here (no host PID namespace); the agent's end-to-end tests and `deploy_compose`
//! cover it.

use std::path::Path;
use std::time::{Duration, Instant};

use e2e::TempDir;
use e2e::systemd::{SystemdHost, build_deb, message, realtime_us};

const NETMON_SOCK: &str = "/run/netmon/netmon.sock";
const AGENT_SOCK: &str = "/run/agent/agent.sock";
const UP_WITHIN: Duration = Duration::from_secs(60);

/// A booted host with the package installed and both units active.
fn installed_host() -> (SystemdHost, TempDir, String) {
    let dir = TempDir::new("sdb");
    let deb = build_deb(&dir);
    let host = SystemdHost::boot();
    let said = host.install(&deb);
    assert!(
        !said.contains("Could not execute systemctl"),
        "a unit failed to start during dpkg -i: {said}"
    );
    host.wait_active("netmon.service", UP_WITHIN);
    host.wait_active("agent.service", UP_WITHIN);
    wait_healthy(&host);
    (host, dir, said)
}

/// `agent health` as root passes (netmon linked, engine reachable).
fn wait_healthy(host: &SystemdHost) {
    e2e::wait_for(UP_WITHIN, "agent health to pass as root", || {
        host.sh("timeout 10 agent health").ok()
    });
}

/// `mode owner:group` of a path inside.
fn stat(host: &SystemdHost, path: &str) -> String {
    host.must(&format!("stat -c '%a %U:%G' {path}"))
        .trim()
        .to_string()
}

#[test]
fn units_come_up_in_order_with_the_modes_they_declare_and_health_by_membership() {
    let (host, _dir, said) = installed_host();

    // The engine's socket comes in with a gid that has no name here: the package
    // made a docker group of that gid, so SupplementaryGroups=docker starts.
    let sock_gid = host
        .must("stat -c %g /var/run/docker.sock")
        .trim()
        .to_string();
    let docker_gid = host
        .must("getent group docker | cut -d: -f3")
        .trim()
        .to_string();
    assert_eq!(sock_gid, docker_gid, "dpkg said: {said}");
    assert!(said.contains("created system group docker"), "{said}");

    // Boot order: the agent (After=netmon.service) starts once netmon is ready.
    let netmon_ready: u64 = host
        .prop("netmon.service", "ActiveEnterTimestampMonotonic")
        .parse()
        .expect("netmon timestamp");
    let agent_start: u64 = host
        .prop("agent.service", "ExecMainStartTimestampMonotonic")
        .parse()
        .expect("agent timestamp");
    assert!(
        netmon_ready > 0 && agent_start >= netmon_ready,
        "agent started at {agent_start} µs, before netmon was ready at {netmon_ready} µs"
    );
    // And after a reboot of both, the same (systemctl restart keeps the order).
    host.must("systemctl restart netmon.service agent.service");
    host.wait_active("agent.service", UP_WITHIN);

    // Modes as the units say: RuntimeDirectoryMode=0750 (both), StateDirectoryMode=0700,
    // netmon's socket 0660 group netmon (--socket-mode, --socket-group).
    assert_eq!(stat(&host, "/run/netmon"), "750 netmon:netmon");
    assert_eq!(stat(&host, NETMON_SOCK), "660 netmon:netmon");
    assert_eq!(stat(&host, "/run/agent"), "750 root:root");
    assert_eq!(stat(&host, "/var/lib/agent"), "700 root:root");
    e2e::wait_for(UP_WITHIN, "the agent's control socket", || {
        host.sh(&format!("test -S {AGENT_SOCK}")).ok()
    });
    // UMask=0077 and the agent's own mode: nothing for others.
    let agent_sock = stat(&host, AGENT_SOCK);
    assert!(
        agent_sock.ends_with(" root:root") && agent_sock.as_bytes()[2] == b'0',
        "{AGENT_SOCK}: {agent_sock}"
    );

    // Health: root; a member of netmon (reads the socket); a user in no group.
    host.must(&format!("netmon health --socket {NETMON_SOCK}"));
    wait_healthy(&host);
    host.must(
        "useradd --no-create-home --groups netmon member && useradd --no-create-home outsider",
    );
    host.must(&format!(
        "runuser -u member -- netmon health --socket {NETMON_SOCK}"
    ));
    let refused = host
        .sh(&format!(
            "runuser -u outsider -- netmon health --socket {NETMON_SOCK} 2>&1"
        ))
        .expect_err("netmon health passed for a user outside group netmon");
    assert!(
        refused.to_lowercase().contains("permission denied"),
        "netmon health for a non-member does not say why: {refused}"
    );
    // The agent's control socket is root's only (/run/agent 0750 root:root).
    let refused = host
        .sh("runuser -u outsider -- agent health 2>&1")
        .expect_err("agent health passed for an unprivileged user");
    assert!(
        refused.to_lowercase().contains("permission denied"),
        "agent health for a non-root user does not say why: {refused}"
    );

    // A link of the container's own going up and down: netmon logs each change.
    host.must(
        "ip link add edt0 type veth peer name edt1 && ip link set edt1 up && ip link set edt0 up",
    );
    let change = |status: &str| {
        e2e::wait_for(UP_WITHIN, &format!("netmon to log edt0 {status}"), || {
            host.journal("netmon.service").into_iter().find(|r| {
                message(r) == "network_change"
                    && r["F_INTERFACE"] == "edt0"
                    && r["F_STATUS"] == status
            })
        })
    };
    change("up");
    host.must("ip link set edt0 down");
    let down = change("down");
    // An absent value is left out, not written as `None`.
    assert!(down.get("F_GATEWAY").is_none(), "{down}");

    // journald gets plain values, never Rust's Debug text.
    for unit in ["netmon.service", "agent.service"] {
        for r in host.journal(unit) {
            let Some(fields) = r.as_object() else {
                continue;
            };
            for (k, v) in fields.iter().filter(|(k, _)| k.starts_with("F_")) {
                let v = v.as_str().unwrap_or("");
                assert!(
                    !v.starts_with("Some(") && v != "None",
                    "{unit}: journald field {k}={v} holds Debug text ({})",
                    message(&r)
                );
            }
        }
    }
    let listening = host
        .journal("netmon.service")
        .into_iter()
        .find(|r| message(r) == "listening")
        .expect("netmon logged `listening`");
    assert_eq!(listening["F_GROUP"], "netmon", "{listening}");
}

/// Waits until the agent reports netmon connected with this instance.
fn agent_linked_to(host: &SystemdHost, instance: &str) {
    e2e::wait_for(UP_WITHIN, "the agent linked to the new netmon", || {
        let s = host.sh("agent status --json").ok()?;
        let v: serde_json::Value = serde_json::from_str(&s).ok()?;
        (v["netmon"]["connected"] == true && v["netmon"]["instance"] == instance).then_some(())
    });
}

/// netmon's instance id, from its unit status line ("..., instance X").
fn netmon_instance(host: &SystemdHost) -> String {
    let status = host.prop("netmon.service", "StatusText");
    status
        .rsplit_once("instance ")
        .map(|(_, i)| i.trim().to_string())
        .unwrap_or_else(|| panic!("netmon's status has no instance: {status}"))
}

#[test]
fn kill_9_of_each_daemon_is_restarted_by_systemd_and_the_agent_reconnects() {
    let (host, _dir, _) = installed_host();
    for unit in ["netmon.service", "agent.service"] {
        let pid = host.wait_active(unit, UP_WITHIN);
        let before = netmon_instance(&host);
        host.must(&format!("kill -9 {pid}"));
        // RestartSec=2s, then Type=notify makes it active only once READY=1.
        let end = Instant::now() + UP_WITHIN;
        let new_pid = loop {
            let p = host.wait_active(unit, UP_WITHIN);
            if p != pid {
                break p;
            }
            assert!(Instant::now() < end, "{unit} not restarted after kill -9");
            std::thread::sleep(Duration::from_millis(200));
        };
        assert_ne!(new_pid, pid);
        assert_eq!(host.prop(unit, "NRestarts"), "1", "{unit} restarts");
        let instance = netmon_instance(&host);
        if unit == "netmon.service" {
            assert_ne!(instance, before, "a new netmon has a new instance id");
        }
        agent_linked_to(&host, &instance);
        wait_healthy(&host);
    }
}

#[test]
fn netmon_stopped_leaves_the_agent_idle_and_it_reconnects_within_a_second_of_the_start() {
    let (host, _dir, _) = installed_host();
    let agent = host.wait_active("agent.service", UP_WITHIN);
    host.must("systemctl stop netmon.service");
    // systemctl stop removes the socket (and its RuntimeDirectory).
    assert!(
        !host.exists(Path::new(NETMON_SOCK)),
        "netmon's socket left after stop"
    );
    assert!(
        !host.exists(Path::new("/run/netmon")),
        "/run/netmon left after stop"
    );

    // Ten seconds without netmon: the agent waits, it does not spin.
    let t0 = host.cpu_time(agent).expect("agent cpu");
    let w0 = Instant::now();
    std::thread::sleep(Duration::from_secs(10));
    let used = host.cpu_time(agent).expect("agent cpu") - t0;
    let wall = w0.elapsed();
    eprintln!("agent CPU with netmon stopped: {used:?} in {wall:?}");
    assert_eq!(
        host.wait_active("agent.service", UP_WITHIN),
        agent,
        "the agent restarted while netmon was away"
    );

    // The agent may connect between netmon's bind and its `listening` record (it
    // watches for the socket), so its record is looked for from the start command on.
    let before_start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as u64;
    host.must("systemctl start netmon.service");
    let instance = netmon_instance(&host);
    agent_linked_to(&host, &instance);
    // Within a second of netmon serving ("listening") the agent is connected.
    let listening = host
        .journal("netmon.service")
        .iter()
        .filter(|r| message(r) == "listening")
        .map(realtime_us)
        .max()
        .expect("netmon logged `listening`");
    // The journal may store the record a moment after the agent acted on it.
    let connected_at = || {
        host.journal("agent.service")
            .iter()
            .filter(|r| message(r) == "connected to netmon" && realtime_us(r) >= before_start)
            .map(realtime_us)
            .min()
    };
    let wait = Instant::now();
    let mut connected = connected_at();
    while connected.is_none() && wait.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(200));
        connected = connected_at();
    }
    let connected = connected.expect("the agent logged `connected to netmon` after netmon started");
    let took = Duration::from_micros(connected.saturating_sub(listening));
    eprintln!("agent reconnected {took:?} after netmon started listening");
    // Both figures are checked here, so a failure reports both.
    assert!(
        used < Duration::from_millis(300) && took <= Duration::from_secs(1),
        "with netmon stopped the agent used {used:?} of CPU in {wall:?} (near zero expected: \
         a busy loop?), and reconnected {took:?} after netmon started (at most 1 s)"
    );

    // Stopping the agent removes its control socket too.
    host.must("systemctl stop agent.service netmon.service");
    assert!(
        !host.exists(Path::new(AGENT_SOCK)),
        "agent's socket left after stop"
    );
    assert!(
        !host.exists(Path::new("/run/agent")),
        "/run/agent left after stop"
    );
}

/// `systemd-analyze security UNIT`'s overall exposure (0 best .. 10 worst).
fn exposure(host: &SystemdHost, unit: &str) -> f64 {
    let out = host.must(&format!("systemd-analyze security --no-pager {unit}"));
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("→ Overall exposure level for {unit}: ")))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level for {unit}: {out}"))
}

#[test]
fn security_scores_stay_at_or_below_todays_and_purge_leaves_nothing_then_reinstall_works() {
    let (host, dir, _) = installed_host();
    // Measured under this systemd when the tier was written; held, never raised.
    for (unit, today) in [("netmon.service", 1.2), ("agent.service", 4.4)] {
        let score = exposure(&host, unit);
        eprintln!("{unit}: exposure {score}");
        assert!(score <= today, "{unit} exposure {score} above {today}");
    }

    host.must("dpkg --purge edgenet 2>&1");
    for p in [
        "/usr/bin/netmon",
        "/usr/bin/agent",
        "/usr/lib/systemd/system/netmon.service",
        "/usr/lib/systemd/system/agent.service",
        "/usr/lib/sysusers.d/netmon.conf",
        "/usr/share/doc/edgenet",
        "/etc/systemd/system/multi-user.target.wants/netmon.service",
        "/etc/systemd/system/multi-user.target.wants/agent.service",
        "/var/lib/systemd/deb-systemd-helper-enabled/netmon.service",
        "/var/lib/systemd/deb-systemd-helper-enabled/agent.service",
        "/var/lib/agent",
        "/var/lib/edgenet",
        "/run/netmon",
        "/run/agent",
    ] {
        assert!(!host.exists(Path::new(p)), "{p} left after purge");
    }
    for (db, name) in [
        ("passwd", "netmon"),
        ("group", "netmon"),
        ("group", "docker"),
    ] {
        assert!(
            host.sh(&format!("getent {db} {name}")).is_err(),
            "{db} {name} left after purge"
        );
    }
    for unit in ["netmon.service", "agent.service"] {
        assert_eq!(
            host.prop(unit, "LoadState"),
            "not-found",
            "{unit} after purge"
        );
    }
    assert!(
        host.sh("pgrep -x netmon || pgrep -x agent").is_err(),
        "a daemon still runs after purge"
    );

    // Reinstall: all of it back, running and healthy.
    let deb = dir
        .path()
        .join(format!("edgenet_{}_amd64.deb", env!("CARGO_PKG_VERSION")));
    let said = host.install(&deb.display().to_string());
    assert!(!said.contains("Could not execute systemctl"), "{said}");
    host.wait_active("netmon.service", UP_WITHIN);
    host.wait_active("agent.service", UP_WITHIN);
    wait_healthy(&host);
}

#[test]
fn the_watchdog_never_fires_during_normal_work() {
    let (host, _dir, _) = installed_host();
    // The units' WatchdogSec=30s would need minutes to prove anything; a drop-in
    // of 1 s held for 20 s is twenty periods, each one missed ping from a restart.
    host.must(
        "for u in netmon agent; do mkdir -p /etc/systemd/system/$u.service.d && \
         printf '[Service]\\nWatchdogSec=1s\\n' > /etc/systemd/system/$u.service.d/wd.conf; done && \
         systemctl daemon-reload && systemctl restart netmon.service agent.service",
    );
    for unit in ["netmon.service", "agent.service"] {
        host.wait_active(unit, UP_WITHIN);
        assert_eq!(host.prop(unit, "WatchdogUSec"), "1s", "{unit} drop-in");
    }
    wait_healthy(&host);
    let pids = (
        host.prop("netmon.service", "MainPID"),
        host.prop("agent.service", "MainPID"),
    );
    // Normal work meanwhile: clients coming and going, status and health calls.
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end {
        host.must(&format!(
            "netmon health --socket {NETMON_SOCK} && agent status >/dev/null && agent health"
        ));
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        (
            host.prop("netmon.service", "MainPID"),
            host.prop("agent.service", "MainPID")
        ),
        pids,
        "a daemon was replaced"
    );
    for unit in ["netmon.service", "agent.service"] {
        assert_eq!(host.prop(unit, "NRestarts"), "0", "{unit} restarted");
        let fired: Vec<String> = host
            .journal(unit)
            .iter()
            .map(|r| message(r).to_string())
            .filter(|m| m.contains("Watchdog timeout"))
            .collect();
        assert!(fired.is_empty(), "{unit}: {fired:?}");
    }
}
