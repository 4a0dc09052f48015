//! End to end: the agent never destroys what it did not make, and starts up without
//! races. A regular file at the control socket's path is left byte-identical; a failed
//! create next to a foreign container and network of the same name leaves both alone;
//! `store reset` refuses a healthy store without `--force`; a create sent in the same
//! instant as `agent run` succeeds; idle clients cannot lock out `agent health`; a
//! missing netmon directory costs no CPU and netmon's return is noticed at once.

use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::agent::{AgentProc, DockerCleanup, HostLan, HostNetmon, has, stored_mac, subnets};
use e2e::docker::{require_engine, test_image};
use e2e::{TempDir, bin, must, sh, unique, wait_for};

#[test]
fn a_regular_file_at_the_control_socket_is_left_alone() {
    e2e::require_root();
    let dir = TempDir::new("ags");
    let path = dir.join("agent.sock");
    let bytes = b"{\"plc1\": [{\"name\": \"eth0\"}]}\n";
    std::fs::write(&path, bytes).expect("write the file");
    let out = Command::new(bin("agent"))
        .args(["--control-socket"])
        .arg(&path)
        .args(["run", "--netmon-socket"])
        .arg(dir.join("netmon.sock"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .output()
        .expect("spawn agent");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a socket"), "{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert_eq!(std::fs::read(&path).expect("still there"), bytes);

    // A symlink is refused the same way; its target is untouched.
    std::fs::remove_file(&path).unwrap();
    let target = dir.join("target");
    std::fs::write(&target, b"keep").unwrap();
    std::os::unix::fs::symlink(&target, &path).unwrap();
    let out = Command::new(bin("agent"))
        .arg("--control-socket")
        .arg(&path)
        .args(["run", "--netmon-socket"])
        .arg(dir.join("netmon.sock"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .output()
        .expect("spawn agent");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::read(&target).unwrap(), b"keep");
}

#[test]
fn a_failed_create_next_to_foreign_objects_of_the_same_name_leaves_them_alone() {
    e2e::require_root();
    require_engine();
    let image = test_image();
    let dir = TempDir::new("ags");
    let p = unique("gs");
    let (s1, _, _) = subnets();
    let _lan = HostLan::new(&p, &format!("{s1}.2/24"), &format!("{s1}.1/24"));
    let name = unique("rt");
    let internal = format!("{name}_internal");
    let _cleanup = DockerCleanup {
        containers: vec![name.clone()],
        networks: vec![internal.clone()],
        parents: vec![p.clone()],
    };
    let netmon = HostNetmon::start(dir.path(), &[&p]);
    let agent = AgentProc::start(dir.path(), &netmon.socket, &[]);

    // Somebody else's container with the runtime's name.
    must(&format!(
        "docker run -d --name {name} --network none {image} sleep 3600"
    ));
    let id_before = must(&format!("docker inspect -f '{{{{.Id}}}}' {name}"));
    let out = agent.cli(&[
        "runtime",
        "create",
        &name,
        "--image",
        &image,
        "--vnic",
        &format!("name=eth0,parent={p},mode=dhcp"),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not made by this agent"), "{err}");
    assert_eq!(
        must(&format!("docker inspect -f '{{{{.Id}}}}' {name}")),
        id_before
    );
    assert_eq!(
        must(&format!(
            "docker inspect -f '{{{{.State.Running}}}}' {name}"
        ))
        .trim(),
        "true"
    );
    must(&format!("docker rm -f {name}"));

    // Somebody else's network NAME_internal, and an image that does not exist: the
    // create fails and the foreign network stays.
    must(&format!("docker network create {internal}"));
    let net_before = must(&format!(
        "docker network inspect -f '{{{{.Id}}}}' {internal}"
    ));
    let out = agent.cli(&[
        "runtime",
        "create",
        &name,
        "--image",
        "edgenet-no-such-image:none",
        "--vnic",
        &format!("name=eth0,parent={p},mode=dhcp"),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&internal) && err.contains("not made by this agent"),
        "{err}"
    );
    assert_eq!(
        must(&format!(
            "docker network inspect -f '{{{{.Id}}}}' {internal}"
        )),
        net_before
    );
    must(&format!("docker network rm {internal}"));

    // No foreign objects, a bad image: only what this create made is removed.
    let out = agent.cli(&[
        "runtime",
        "create",
        &name,
        "--image",
        "edgenet-no-such-image:none",
        "--vnic",
        &format!("name=eth0,parent={p},mode=dhcp"),
    ]);
    assert!(!out.status.success());
    assert!(
        sh(&format!("docker network inspect {internal}")).is_err(),
        "its network removed"
    );
    assert!(sh(&format!("docker inspect {name}")).is_err());
    let list = agent.json(&["runtime", "list"]);
    assert!(
        list.get(&name).is_none(),
        "forgotten after the failure: {list}"
    );
}

#[test]
fn store_reset_refuses_a_healthy_store_without_force_and_keeps_a_copy() {
    e2e::require_root();
    let dir = TempDir::new("ags");
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let file = state.join("runtime_vnics.json");
    let content = b"{\n  \"plc1\": [\n    {\n      \"name\": \"eth0\",\n      \"parent_interface\": \"ens37\",\n      \"network_mode\": \"dhcp\",\n      \"mac_address\": \"02:5e:91:0c:7a:33\"\n    }\n  ]\n}";
    std::fs::write(&file, content).unwrap();
    let netmon = HostNetmon::start(dir.path(), &["nothing"]);
    let agent = AgentProc::start(dir.path(), &netmon.socket, &[]);
    let out = agent.cli(&["store", "reset"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--force") && err.contains("holds 1 runtimes"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        content,
        "the file is untouched"
    );
    let out = agent.must(&["store", "reset", "--force"]);
    assert!(out.contains("store reset: 0 runtimes"), "{out}");
    let kept: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("runtime_vnics.json.reset-")
        })
        .collect();
    assert_eq!(kept.len(), 1, "one copy kept");
    assert_eq!(std::fs::read(kept[0].path()).unwrap(), content);
    assert!(out.contains(&kept[0].path().display().to_string()), "{out}");
}

#[test]
fn a_create_sent_with_agent_run_succeeds_and_idle_clients_cannot_lock_out_health() {
    e2e::require_root();
    require_engine();
    let image = test_image();
    let dir = TempDir::new("ags");
    let p = unique("gi");
    let (s1, _, _) = subnets();
    let _lan = HostLan::new(&p, &format!("{s1}.2/24"), &format!("{s1}.1/24"));
    let rt = unique("rt");
    let _cleanup = DockerCleanup::runtimes(&[&rt], &[&p]);
    let netmon = HostNetmon::start(dir.path(), &[&p]);
    let mut agent = AgentProc::configured(dir.path(), &netmon.socket, &[], &[]);
    // The same instant: the CLI starts before the agent has even bound its socket.
    agent.launch();
    let created = agent.cli(&[
        "runtime",
        "create",
        &rt,
        "--image",
        &image,
        "--vnic",
        &format!("name=eth1,parent={p},mode=dhcp"),
    ]);
    assert!(
        created.status.success(),
        "{}{}",
        String::from_utf8_lossy(&created.stdout),
        String::from_utf8_lossy(&created.stderr)
    );
    let mac = stored_mac(&agent, &rt, &p);
    wait_for(Duration::from_secs(20), "the runtime attached", || {
        has(&rt, &mac, &s1).then_some(())
    });

    // 65 clients that connect and never speak: health still answers.
    let idle: Vec<UnixStream> = (0..65)
        .map(|_| UnixStream::connect(&agent.control).expect("connect"))
        .collect();
    let t = Instant::now();
    let out = agent.cli(&["health"]);
    println!("health with 65 idle clients took {:?}", t.elapsed());
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    drop(idle);
}

/// CPU time (user + system) of a process so far.
fn cpu_time(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

#[test]
fn a_missing_netmon_directory_costs_no_cpu_and_netmon_is_found_again() {
    e2e::require_root();
    let dir = TempDir::new("ags");
    let run = dir.join("run/netmon");
    std::fs::create_dir_all(&run).unwrap();
    let mut netmon = HostNetmon::start(&run, &["nothing"]);
    let agent = AgentProc::start(dir.path(), &netmon.socket, &[]);
    wait_for(
        Duration::from_secs(10),
        "the agent connected to netmon",
        || (agent.status()["netmon"]["connected"] == true).then_some(()),
    );
    // systemd removes netmon's RuntimeDirectory when netmon stops.
    netmon.child.signal(nix::sys::signal::Signal::SIGTERM);
    netmon.child.wait_timeout(Duration::from_secs(10));
    std::fs::remove_dir_all(&run).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let before = cpu_time(agent.child.pid());
    std::thread::sleep(Duration::from_secs(5));
    let spent = cpu_time(agent.child.pid()) - before;
    println!("agent CPU over 5 s without netmon's directory: {spent:?}");
    assert!(
        spent < Duration::from_millis(250),
        "the agent spins: {spent:?} of CPU in 5 s"
    );

    std::fs::create_dir_all(&run).unwrap();
    let back = Instant::now();
    netmon.restart();
    wait_for(Duration::from_secs(5), "the agent back on netmon", || {
        (agent.status()["netmon"]["connected"] == true).then_some(())
    });
    println!("reconnected {:?} after netmon's start", back.elapsed());
}
