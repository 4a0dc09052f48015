//! The systemd units: they pass `systemd-analyze verify` with the binaries in
//! place, they say what the deployment issue asks, and each unit's own ExecStart
//! line (run the way the unit runs it: its user, groups and capability bounding
//! set, its runtime/state directories) sends READY=1, watchdog pings and
//! STOPPING=1 to a NOTIFY_SOCKET the test binds. No systemd needed for that.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use e2e::deploy::{
    JournalSocket, NotifySocket, SystemAccount, exec_start, id_of, system_lock, systemd,
    unit_values,
};
use e2e::{ChildGuard, TempDir, bin, must, require_root, wait_for};
use nix::sys::signal::Signal;

fn unit_text(name: &str) -> String {
    std::fs::read_to_string(systemd(name)).unwrap_or_else(|e| panic!("read systemd/{name}: {e}"))
}

fn one(text: &str, key: &str) -> String {
    let v = unit_values(text, "Service", key);
    assert_eq!(v.len(), 1, "{key}: {v:?}");
    v[0].clone()
}

#[test]
fn units_pass_systemd_analyze_verify_with_the_binaries_in_place() {
    require_root();
    // A root holding systemd's own units, ours, and executables at the ExecStart
    // paths: verify then checks everything, including that the binaries exist.
    let root = TempDir::new("svr");
    let r = root.path().display();
    must(&format!(
        "mkdir -p {r}/usr/bin {r}/usr/lib/systemd {r}/etc/systemd/system && cp -a /usr/lib/systemd/system {r}/usr/lib/systemd/"
    ));
    for (unit, b) in [("netmon.service", "netmon"), ("agent.service", "agent")] {
        std::fs::copy(systemd(unit), root.join("etc/systemd/system").join(unit))
            .expect("copy unit");
        let argv = exec_start(&systemd(unit));
        assert_eq!(argv[0], format!("/usr/bin/{b}"));
        std::fs::copy(bin(b), root.join(&argv[0][1..])).expect("copy binary");
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={r}"))
        .args(["--man=no", "netmon.service", "agent.service"])
        .output()
        .expect("systemd-analyze (apt-get install systemd)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.trim().is_empty(),
        "systemd-analyze verify: {} {err}",
        out.status
    );

    // systemd's own exposure rating (0 best .. 10 worst, threshold in tenths):
    // netmon is nearly fully confined; the agent, which must enter other
    // namespaces as root, stays in the "OK" band.
    for (unit, threshold) in [("netmon.service", 20), ("agent.service", 50)] {
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=true"])
            .arg(format!("--root={r}"))
            .arg(format!("--threshold={threshold}"))
            .arg(unit)
            .output()
            .expect("systemd-analyze security");
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{unit} exposure above {threshold}/100: {}",
            said.lines().last().unwrap_or("")
        );
    }

    // The same verify notices a missing binary: the check above is not vacuous.
    std::fs::remove_file(root.join("usr/bin/agent")).expect("rm");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={r}"))
        .args(["--man=no", "agent.service"])
        .output()
        .expect("systemd-analyze");
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("/usr/bin/agent"),
        "verify without the binary: {} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn units_hold_the_directives_the_deployment_needs() {
    let n = unit_text("netmon.service");
    assert_eq!(one(&n, "Type"), "notify");
    assert!(!one(&n, "WatchdogSec").is_empty());
    assert_eq!(one(&n, "RuntimeDirectory"), "netmon");
    assert_eq!(one(&n, "Restart"), "on-failure");
    assert_eq!(one(&n, "CapabilityBoundingSet"), "");
    assert_eq!(one(&n, "AmbientCapabilities"), "");
    assert_eq!(one(&n, "RestrictAddressFamilies"), "AF_NETLINK AF_UNIX");
    assert_eq!(one(&n, "ProtectSystem"), "strict");
    assert_eq!(one(&n, "NoNewPrivileges"), "yes");
    assert_eq!(one(&n, "Group"), "netmon");
    let argv = exec_start(&systemd("netmon.service"));
    let joined = argv.join(" ");
    for want in [
        "--socket /run/netmon/netmon.sock",
        "--socket-group netmon",
        "--socket-mode 0660",
        "--log-format journald",
    ] {
        assert!(
            joined.contains(want),
            "netmon ExecStart lacks {want}: {joined}"
        );
    }

    let a = unit_text("agent.service");
    assert_eq!(one(&a, "Type"), "notify");
    assert!(!one(&a, "WatchdogSec").is_empty());
    assert_eq!(one(&a, "Restart"), "on-failure");
    assert_eq!(one(&a, "StateDirectory"), "agent");
    assert_eq!(one(&a, "ProtectSystem"), "strict");
    let groups = one(&a, "SupplementaryGroups");
    assert!(groups.split_whitespace().any(|g| g == "netmon"), "{groups}");
    assert!(groups.split_whitespace().any(|g| g == "docker"), "{groups}");
    let after = unit_values(&a, "Unit", "After").join(" ");
    assert!(
        after.contains("netmon.service") && after.contains("docker.service"),
        "{after}"
    );
    assert_eq!(unit_values(&a, "Unit", "Wants").join(" "), "netmon.service");
    // An engine restart must not stop the agent.
    assert!(unit_values(&a, "Unit", "Requires").is_empty());
    assert!(unit_values(&a, "Unit", "BindsTo").is_empty());
    let joined = exec_start(&systemd("agent.service")).join(" ");
    assert!(
        joined.contains("--netmon-socket /run/netmon/netmon.sock"),
        "{joined}"
    );
    assert!(joined.contains("--state-dir /var/lib/agent"), "{joined}");
}

/// A unit's ExecStart, with the binary taken from the build and the directories
/// systemd would make (`/run/<x>`, `/var/lib/<x>`) mapped into `dirs`.
fn unit_command(unit: &str, dirs: &[(&str, &Path)]) -> Vec<String> {
    let argv = exec_start(&systemd(unit));
    let name = Path::new(&argv[0])
        .file_name()
        .and_then(|s| s.to_str())
        .expect("binary name")
        .to_string();
    let mut out = vec![bin(&name).display().to_string()];
    for a in &argv[1..] {
        let mapped = dirs
            .iter()
            .find_map(|(from, to)| {
                a.strip_prefix(from)
                    .map(|rest| format!("{}{rest}", to.display()))
            })
            .unwrap_or_else(|| a.clone());
        out.push(mapped);
    }
    out
}

fn runtime_dir(base: &TempDir, name: &str, uid: u32, gid: u32, mode: u32) -> PathBuf {
    let d = base.join(name);
    std::fs::create_dir_all(&d).expect("mkdir");
    nix::unistd::chown(&d, Some(uid.into()), Some(gid.into())).expect("chown");
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)).expect("chmod");
    d
}

/// Starts netmon from its unit line as the unit does: user and group `netmon`, no
/// capabilities, no new privileges, RuntimeDirectory=netmon (0750, owned by it).
fn start_netmon(
    base: &TempDir,
    account: &SystemAccount,
    notify: &NotifySocket,
) -> (ChildGuard, PathBuf) {
    let run = runtime_dir(base, "run-netmon", account.uid(), account.gid(), 0o750);
    let argv = unit_command("netmon.service", &[("/run/netmon", &run)]);
    let child = Command::new("setpriv")
        .arg(format!("--reuid={}", account.uid()))
        .arg(format!("--regid={}", account.gid()))
        .args([
            "--clear-groups",
            "--bounding-set=-all",
            "--inh-caps=-all",
            "--no-new-privs",
            "--",
        ])
        .args(&argv)
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "1000000")
        .env_remove("WATCHDOG_PID")
        .env_remove("NETMON_SOCKET")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn setpriv netmon");
    (ChildGuard(Some(child)), run.join("netmon.sock"))
}

fn alive(c: &mut ChildGuard) -> impl FnMut() -> Result<(), String> + '_ {
    move || match c.child().try_wait() {
        Ok(Some(st)) => Err(format!("exited: {st}")),
        Ok(None) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

#[test]
fn netmon_unit_line_notifies_ready_watchdog_and_stopping_without_capabilities() {
    require_root();
    let _lock = system_lock();
    let journal = JournalSocket::ensure();
    let account = SystemAccount::ensure("netmon", true);
    let base = TempDir::new("svn");
    let mut notify = NotifySocket::bind();
    let (mut netmon, socket) = start_netmon(&base, &account, &notify);

    notify.wait_for("READY=1", 1, Duration::from_secs(30), alive(&mut netmon));
    // WATCHDOG_USEC=1s: pings at least every second; wait for a few.
    notify.wait_for("WATCHDOG=1", 3, Duration::from_secs(30), alive(&mut netmon));
    if journal.is_ours() {
        let records = journal.records();
        assert!(
            records
                .iter()
                .any(|r| r.contains("MESSAGE") && r.contains("SYSLOG_IDENTIFIER")),
            "--log-format journald sent no record to the journal socket: {records:?}"
        );
    }

    // The socket the unit promises: group netmon, mode 0660.
    let meta = std::fs::metadata(&socket).expect("netmon's socket after READY=1");
    assert_eq!(meta.gid(), account.gid(), "socket group");
    assert_eq!(meta.mode() & 0o777, 0o660, "socket mode");
    let health = Command::new(bin("netmon"))
        .args(["health", "--socket"])
        .arg(&socket)
        .output()
        .expect("netmon health");
    assert!(
        health.status.success(),
        "netmon health: {}",
        String::from_utf8_lossy(&health.stderr)
    );

    netmon.signal(Signal::SIGTERM);
    notify.wait_for("STOPPING=1", 1, Duration::from_secs(15), || Ok(()));
    let st = netmon
        .wait_timeout(Duration::from_secs(15))
        .expect("netmon exits after SIGTERM");
    assert!(st.success(), "netmon exit status {st}");
    assert!(!socket.exists(), "netmon left its socket behind");
}

#[test]
fn agent_unit_line_becomes_ready_with_netmon_and_the_engine() {
    require_root();
    e2e::agent::require_engine();
    let _lock = system_lock();
    let _journal = JournalSocket::ensure();
    let account = SystemAccount::ensure("netmon", true);
    let docker_gid = id_of("group", "docker");
    let base = TempDir::new("sva");
    let mut netmon_notify = NotifySocket::bind();
    let (mut netmon, netmon_socket) = start_netmon(&base, &account, &netmon_notify);
    netmon_notify.wait_for("READY=1", 1, Duration::from_secs(30), alive(&mut netmon));

    // As agent.service runs it: root, SupplementaryGroups=netmon docker, and only
    // the capabilities of its bounding set. Reaching netmon's 0660 socket then
    // depends on the netmon group, as under systemd.
    let state = runtime_dir(&base, "state-agent", 0, 0, 0o700);
    let run = runtime_dir(&base, "run-agent", 0, 0, 0o750);
    let argv = unit_command(
        "agent.service",
        &[
            ("/run/netmon", netmon_socket.parent().expect("parent")),
            ("/var/lib/agent", &state),
            ("/run/agent", &run),
        ],
    );
    let bounding = one(&unit_text("agent.service"), "CapabilityBoundingSet")
        .split_whitespace()
        .map(|c| format!(",+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect::<String>();
    let mut notify = NotifySocket::bind();
    let child = Command::new("setpriv")
        .arg(format!("--groups={},{docker_gid}", account.gid()))
        .arg(format!("--bounding-set=-all{bounding}"))
        .args(["--no-new-privs", "--"])
        .args(&argv)
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "1000000")
        .env_remove("WATCHDOG_PID")
        .env_remove("DOCKER_HOST")
        .env_remove("AGENT_CONTAINER")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn setpriv agent");
    let mut agent = ChildGuard(Some(child));

    notify.wait_for("READY=1", 1, Duration::from_secs(60), alive(&mut agent));
    notify.wait_for("WATCHDOG=1", 3, Duration::from_secs(30), alive(&mut agent));

    // Healthy means: netmon linked (through the group), the engine reachable.
    let control = run.join("agent.sock");
    wait_for(Duration::from_secs(30), "agent health to pass", || {
        // `timeout`: a health probe that hangs must not hang the test.
        let out = Command::new("timeout")
            .arg("10")
            .arg(bin("agent"))
            .arg("--control-socket")
            .arg(&control)
            .arg("health")
            .output()
            .ok()?;
        out.status.success().then_some(())
    });

    agent.signal(Signal::SIGTERM);
    notify.wait_for("STOPPING=1", 1, Duration::from_secs(20), || Ok(()));
    let st = agent
        .wait_timeout(Duration::from_secs(30))
        .expect("agent exits after SIGTERM");
    assert!(st.success(), "agent exit status {st}");
    netmon.signal(Signal::SIGTERM);
    netmon.wait_timeout(Duration::from_secs(15));
}
