//! The container deployment end to end against the real engine and Debian's dnsmasq:
//! the images, the compose project (`packaging/compose.yaml`) up and healthy with the
//! agent's DHCP client on, a runtime created through the compose tool's `exec` on a
//! DHCP LAN whose parent is in the host's namespace, attached with the address dnsmasq
//! leased for its stored MAC, the LAN moved to another subnet and the runtime seen
//! with a new lease and the same MAC, the runtime deleted (DHCPRELEASE), the project
//! brought down, and nothing left behind. Also `install.sh --mode containers`, run
//! twice (on LANs without a DHCP server).

use std::process::Command;
use std::time::{Duration, Instant};

use e2e::agent::{DockerCleanup, container_networks, has_ip, subnets};
use e2e::compose_lan::{
    HostDhcpLan, agent_status, assert_nothing_left, exec_agent, stored_mac, wait_agent_knows,
};
use e2e::deploy::{Compose, MetricLan, images, packaging, run};
use e2e::docker::{networks_on, test_image};
use e2e::{TempDir, require_root, sh, unique, wait_for};

/// Generous: health checks run every 10 s and the agent starts once netmon is
/// healthy.
const HEALTHY_WITHIN: Duration = Duration::from_secs(120);

/// Waits until dnsmasq leased `mac` an address on the LAN's current subnet and the
/// runtime holds exactly that address on its link with that MAC; the address.
fn leased_and_attached(lan: &HostDhcpLan, rt: &str, mac: &str, limit: Duration) -> String {
    let ip = lan.wait_lease(mac, limit);
    wait_for(limit, &format!("{rt} attached with {ip} on {mac}"), || {
        has_ip(rt, mac, &ip).then_some(())
    });
    ip
}

#[test]
fn compose_deployment_creates_a_runtime_that_follows_its_parent_and_leaves_nothing() {
    require_root();
    let imgs = images();
    let image = test_image();
    let (a1, _, _) = subnets();
    let (b1, _, _) = subnets();
    let mut lan = HostDhcpLan::new(&a1);
    let parent = lan.parent().to_string();
    let rt = unique("drt");
    // Declared before the project so it is dropped after it: the agent's container
    // sits on the runtime's internal network until the project is down.
    let cleanup = DockerCleanup {
        containers: vec![rt.clone()],
        networks: vec![format!("{rt}_internal")],
        parents: vec![parent.clone()],
    };
    let mut compose = Compose::new(&imgs);
    // The LAN has a DHCP server: the agent's client is on.
    compose.set("EDGENET_NO_DHCP_CLIENT", "false");

    compose.must(&["up", "-d"]);
    compose.wait_healthy(HEALTHY_WITHIN);
    // Where an operator looks: `compose logs`, one JSON object per line.
    for service in ["netmon", "agent"] {
        let logs = compose.command(&["logs", "--no-color", service]).output();
        let logs = logs
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        assert!(
            logs.lines()
                .filter_map(|l| l.split_once("| ").map(|(_, json)| json))
                .any(|j| serde_json::from_str::<serde_json::Value>(j).is_ok()),
            "no JSON log line from {service} in compose logs:\n{logs}"
        );
    }
    let volume = compose.volume_dir();
    assert!(
        volume.join("netmon.sock").exists(),
        "netmon's socket is not in the shared volume"
    );

    // The agent sees the parent through netmon before the runtime is made on it.
    wait_agent_knows(&compose, &parent, Duration::from_secs(60));
    let created = Instant::now();
    exec_agent(
        &compose,
        &[
            "runtime",
            "create",
            &rt,
            "--image",
            &image,
            "--vnic",
            &format!("name=eth0,parent={parent},mode=dhcp"),
        ],
    );
    let mac = stored_mac(&compose, &rt, &parent);
    // The agent's client, run from its container in the host's namespace, got the
    // lease for the stored MAC; the runtime holds that address and no other.
    let ip1 = leased_and_attached(&lan, &rt, &mac, Duration::from_secs(60));
    eprintln!(
        "observed: create -> leased and attached in {:?} (compose, agent in a container)",
        created.elapsed()
    );
    let (_, id) = lan.lan.lease_of(&mac).expect("the lease");
    assert_eq!(id, format!("01:{}", mac.to_lowercase()), "client id");
    let route = sh(&format!("docker exec {rt} ip route show default")).unwrap_or_default();
    assert!(route.contains(&format!("via {a1}.1")), "{route}");
    // `agent status --json` shows the lease.
    let st = wait_for(Duration::from_secs(20), "the lease in status", || {
        let v = agent_status(&compose)?["runtimes"][&rt][0]["dhcp"].clone();
        (v["address"] == format!("{ip1}/24")).then_some(v)
    });
    assert_eq!(st["server"], format!("{a1}.1"), "{st}");
    assert!(
        st["renews_at"].is_string() && st["expires_at"].is_string(),
        "{st}"
    );
    // State lives in the shared volume, in the existing deployment's layout.
    let store: serde_json::Value = serde_json::from_slice(
        &std::fs::read(volume.join("runtime_vnics.json"))
            .expect("runtime_vnics.json in the volume"),
    )
    .expect("runtime_vnics.json");
    assert_eq!(store[&rt][0]["dhcp_ip"], ip1.as_str(), "{store}");
    assert!(
        volume.join("dhcp_leases.json").exists(),
        "no dhcp_leases.json in the shared volume"
    );
    let first_networks = networks_on(&parent);
    assert_eq!(first_networks.len(), 1, "{first_networks:?}");

    // The LAN moves: netmon (host network) sees it, the agent (another container)
    // asks the new LAN and moves the runtime there with the same MAC.
    lan.move_to(&b1);
    let ip2 = leased_and_attached(&lan, &rt, &mac, Duration::from_secs(90));
    assert!(ip2.starts_with(&format!("{b1}.")), "{ip2}");
    wait_for(
        Duration::from_secs(30),
        "the runtime off the old subnet's network",
        || (!container_networks(&rt).contains(&first_networks[0])).then_some(()),
    );
    assert_eq!(stored_mac(&compose, &rt, &parent), mac, "MAC kept");

    // Delete: the lease is released and leaves the server's lease file.
    let releases = lan.lan.log_lines("DHCPRELEASE", &mac).len();
    exec_agent(&compose, &["runtime", "delete", &rt]);
    wait_for(
        Duration::from_secs(30),
        "DHCPRELEASE in dnsmasq's log",
        || (lan.lan.log_lines("DHCPRELEASE", &mac).len() > releases).then_some(()),
    );
    wait_for(
        Duration::from_secs(30),
        "the lease gone from the lease file",
        || (!lan.leases_of(&mac).contains(&ip2)).then_some(()),
    );
    assert!(
        sh(&format!("docker inspect {rt} >/dev/null 2>&1")).is_err(),
        "runtime {rt} left after delete"
    );

    // netmon removes its socket when stopped; then the whole project goes.
    compose.must(&["stop", "-t", "10", "netmon"]);
    assert!(
        !volume.join("netmon.sock").exists(),
        "netmon's socket left in the volume after stop"
    );
    compose
        .down()
        .unwrap_or_else(|e| panic!("compose down -v: {e:#}"));
    drop(cleanup);

    assert_nothing_left(&compose, &rt, &parent);
    assert!(!volume.exists(), "{} left", volume.display());
}

#[test]
fn install_script_containers_mode_brings_the_project_up_and_is_idempotent() {
    require_root();
    let imgs = images();
    let compose = Compose::new(&imgs);
    let config = TempDir::new("icf");
    let install = || {
        let out = run(Command::new(packaging("install.sh"))
            .args(["--mode", "containers", "--project", &compose.project])
            .arg("--config-dir")
            .arg(config.path())
            .args(["--wait", &HEALTHY_WITHIN.as_secs().to_string()])
            .envs(compose.envs()))
        .unwrap_or_else(|e| panic!("install.sh --mode containers: {e:#}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    let said = install();
    assert!(
        said.contains("installed ") && said.contains("compose.yaml"),
        "{said}"
    );
    assert!(
        said.contains(&format!("project {} is up", compose.project)),
        "{said}"
    );
    assert!(said.contains("healthy:"), "{said}");
    let ids = (compose.container("netmon"), compose.container("agent"));
    assert!(!ids.0.is_empty() && !ids.1.is_empty(), "{ids:?}");
    assert_eq!(e2e::deploy::health(&ids.0), "healthy");
    assert_eq!(e2e::deploy::health(&ids.1), "healthy");

    let again = install();
    assert!(again.contains("compose.yaml unchanged"), "{again}");
    assert!(
        again.contains("already up; containers unchanged"),
        "{again}"
    );
    assert_eq!(
        (compose.container("netmon"), compose.container("agent")),
        ids,
        "a second run replaced the containers"
    );

    // What it was given is recorded: the README's compose command, typed later
    // without any EDGENET_* or --project, acts on this very project.
    let env = config.join("edgenet.env");
    let recorded = std::fs::read_to_string(&env).expect("install.sh wrote edgenet.env");
    for want in [
        format!("COMPOSE_PROJECT_NAME={}", compose.project),
        format!("EDGENET_VOLUME={}", compose.volume),
        format!("EDGENET_AGENT_IMAGE={}", imgs.agent),
    ] {
        assert!(
            recorded.lines().any(|l| l == want),
            "{want} not in {recorded}"
        );
    }
    let mut ps = Command::new("docker-compose");
    ps.arg("--env-file").arg(&env).args(["ps", "-q"]);
    for (k, _) in compose.envs() {
        ps.env_remove(k);
    }
    let listed = run(ps
        .env_remove("COMPOSE_PROJECT_NAME")
        .env_remove("COMPOSE_FILE"))
    .unwrap_or_else(|e| panic!("docker-compose --env-file: {e:#}"));
    let mut listed: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    listed.sort();
    let mut want = vec![ids.0.clone(), ids.1.clone()];
    want.sort();
    assert_eq!(
        listed, want,
        "docker-compose --env-file saw another project"
    );

    // --uninstall: the project and its volume go; the runtime stays, and it says so.
    let (a1, _, _) = subnets();
    let lan = MetricLan::new(&format!("{a1}.2/24"), &format!("{a1}.1/24"));
    // Its own LAN for the second runtime: runtimes on one parent share its
    // MACVLAN network, which the agent cannot remove while another uses it.
    let (b1, _, _) = subnets();
    let lan2 = MetricLan::new(&format!("{b1}.2/24"), &format!("{b1}.1/24"));
    let (kept, removed) = (unique("kpt"), unique("rmd"));
    let _cleanup = DockerCleanup {
        containers: vec![kept.clone(), removed.clone()],
        networks: vec![format!("{kept}_internal"), format!("{removed}_internal")],
        parents: vec![lan.parent.clone(), lan2.parent.clone()],
    };
    create_runtime(&compose, &env, &lan.parent, &kept);
    let uninstall = |extra: &[&str]| {
        let out = run(Command::new(packaging("install.sh"))
            .arg("--uninstall")
            .args(extra)
            .arg("--config-dir")
            .arg(config.path()))
        .unwrap_or_else(|e| panic!("install.sh --uninstall {extra:?}: {e:#}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let said = uninstall(&[]);
    assert!(
        said.contains(&format!("runtimes left in place: {kept}")),
        "{said}"
    );
    assert!(said.contains("uninstalled"), "{said}");
    assert_eq!(compose.container("netmon"), "", "netmon left: {said}");
    assert_eq!(compose.container("agent"), "", "agent left: {said}");
    assert!(
        sh(&format!(
            "docker volume inspect {} >/dev/null 2>&1",
            compose.volume
        ))
        .is_err(),
        "volume {} left after --uninstall",
        compose.volume
    );
    assert!(!env.exists(), "{} left after --uninstall", env.display());
    assert_eq!(
        e2e::deploy::health(&kept),
        "running",
        "the runtime did not stay"
    );

    // Again, with --remove-runtimes: the agent deletes its runtime first.
    install();
    create_runtime(&compose, &env, &lan2.parent, &removed);
    let said = uninstall(&["--remove-runtimes"]);
    assert!(
        said.contains(&format!("removed runtime {removed}")),
        "{said}"
    );
    assert!(
        !said.contains(&kept),
        "another agent's runtime named: {said}"
    );
    assert!(!said.contains("warning"), "{said}");
    assert_eq!(e2e::deploy::health(&removed), "missing", "{said}");
    assert!(
        e2e::docker::networks_on(&lan2.parent).is_empty(),
        "the removed runtime's MACVLAN network left: {said}"
    );
    assert!(
        sh(&format!(
            "docker network inspect {removed}_internal >/dev/null 2>&1"
        ))
        .is_err(),
        "{removed}_internal left: {said}"
    );
    assert_eq!(
        e2e::deploy::health(&kept),
        "running",
        "another runtime touched"
    );
}

/// `docker-compose --env-file ENV exec -T agent agent ARGS`, as the README types it.
fn exec_recorded(env: &std::path::Path, args: &[&str]) -> Option<String> {
    let out = Command::new("docker-compose")
        .arg("--env-file")
        .arg(env)
        .args(["exec", "-T", "agent", "agent"])
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A runtime on `parent`, made through the installed project's agent once it
/// knows the parent.
fn create_runtime(compose: &Compose, env: &std::path::Path, parent: &str, name: &str) {
    compose.wait_healthy(HEALTHY_WITHIN);
    wait_for(
        Duration::from_secs(60),
        "the agent to know the parent",
        || {
            let v: serde_json::Value =
                serde_json::from_str(&exec_recorded(env, &["status", "--json"])?).ok()?;
            v["interfaces"]
                .as_array()?
                .iter()
                .any(|i| i["name"] == parent)
                .then_some(())
        },
    );
    let image = test_image();
    let vnic = format!("name=eth0,parent={parent},mode=dhcp");
    exec_recorded(
        env,
        &[
            "runtime", "create", name, "--image", &image, "--vnic", &vnic,
        ],
    )
    .unwrap_or_else(|| panic!("runtime create {name} through the recorded project failed"));
}

/// Validates `file` against the Compose Specification's JSON schema (as shipped
/// with Debian's docker-compose; the `docker compose` plugin implements that
/// specification). Returns the schema errors.
fn spec_errors(file: &std::path::Path) -> Vec<String> {
    const SCHEMA: &str = "/usr/lib/python3/dist-packages/compose/config/compose_spec.json";
    let script = format!(
        "import json, sys, yaml, jsonschema\n\
         schema = json.load(open({SCHEMA:?}))\n\
         doc = yaml.safe_load(open(sys.argv[1]))\n\
         for e in jsonschema.Draft7Validator(schema).iter_errors(doc):\n    \
             print(list(e.path), e.message)\n"
    );
    let out = run(Command::new("python3").arg("-c").arg(script).arg(file)).unwrap_or_else(|e| {
        panic!(
            "validate {} (python3-jsonschema, docker-compose): {e:#}",
            file.display()
        )
    });
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn compose_file_is_read_by_docker_compose_1_29_and_fits_the_compose_spec() {
    let file = packaging("compose.yaml");
    // docker-compose 1.29 parses it (format 2.4) with the variables unset...
    let out = run(Command::new("docker-compose")
        .arg("-f")
        .arg(&file)
        .arg("config"))
    .unwrap_or_else(|e| panic!("docker-compose config: {e:#}"));
    let config = String::from_utf8_lossy(&out.stdout);
    for want in [
        "network_mode: host",
        "pid: host",
        "SYS_ADMIN",
        "NET_ADMIN",
        "/var/run/docker.sock",
        "/var/orchestrator",
        "restart: unless-stopped",
        "start_period: 15s",
        "condition: service_healthy",
        "NETMON_SOCKET_MODE: '0666'",
        // The cloud link is off unless asked for: an empty URL, nothing of the host's
        // mounted.
        "AGENT_CLOUD_URL: ''",
        "/dev/null:/etc/edgenet/cloud/client.crt:ro",
        "/dev/null:/etc/edgenet/cloud/client.key:ro",
        "/dev/null:/etc/edgenet/cloud/ca.crt:ro",
    ] {
        assert!(
            config.contains(want),
            "compose config lacks {want}:\n{config}"
        );
    }
    // ...and the file fits the Compose Specification that the plugin reads.
    let errors = spec_errors(&file);
    assert!(
        errors.is_empty(),
        "compose.yaml vs the Compose Specification: {errors:?}"
    );

    // The check is not vacuous: a key outside the specification is caught.
    let dir = TempDir::new("cmp");
    let bad = dir.join("compose.yaml");
    let text = std::fs::read_to_string(&file).expect("read compose.yaml");
    std::fs::write(
        &bad,
        text.replace(
            "    network_mode: host",
            "    network_mode: host\n    networkmode: host",
        ),
    )
    .expect("write");
    assert!(
        !spec_errors(&bad).is_empty(),
        "an unknown key passed the schema"
    );
}
