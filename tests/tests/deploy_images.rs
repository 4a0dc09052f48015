//! The two images: built here from the static binaries (no registry), small,
//! holding nothing but the binary (no shell), with HEALTHCHECK on the binary's own
//! `health`, and a PID 1 that handles SIGTERM (fast `docker stop`, exit code 0,
//! netmon's socket removed from the shared volume).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use e2e::deploy::{health, images, own_images, static_binaries};
use e2e::{must, sh, unique, wait_for};

/// The size limit the deployment issue sets for each image.
const MAX_IMAGE_BYTES: u64 = 15 * 1024 * 1024;

struct Cleanup {
    containers: Vec<String>,
    volumes: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = sh(&format!("docker rm -f {c} >/dev/null 2>&1"));
        }
        for v in &self.volumes {
            let _ = sh(&format!("docker volume rm -f {v} >/dev/null 2>&1"));
        }
    }
}

fn inspect(image: &str, format: &str) -> String {
    must(&format!("docker image inspect -f '{format}' {image}"))
        .trim()
        .to_string()
}

/// Whether an ELF64 little-endian file asks for a program interpreter (PT_INTERP),
/// i.e. needs a dynamic loader that an empty image does not have.
fn has_interpreter(elf: &[u8]) -> bool {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes)
    };
    assert_eq!(elf.get(0..4), Some(&b"\x7fELF"[..]), "not an ELF file");
    assert_eq!(elf.get(4), Some(&2), "not ELF64");
    let phoff = u64_at(0x20).expect("e_phoff") as usize;
    let phentsize = u16_at(0x36).expect("e_phentsize") as usize;
    let phnum = u16_at(0x38).expect("e_phnum") as usize;
    (0..phnum).any(|i| u32_at(phoff + i * phentsize) == Some(3))
}

#[test]
fn binaries_are_static() {
    let b = static_binaries();
    for p in [&b.netmon, &b.agent] {
        let elf = std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
        assert!(
            !has_interpreter(&elf),
            "{} needs a dynamic loader (PT_INTERP)",
            p.display()
        );
        let ldd = std::process::Command::new("ldd")
            .arg(p)
            .output()
            .expect("ldd");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&ldd.stdout),
            String::from_utf8_lossy(&ldd.stderr)
        );
        assert!(
            said.contains("not a dynamic executable") || said.contains("statically linked"),
            "ldd {}: {said}",
            p.display()
        );
    }
    // The check is not vacuous: the test binary itself is dynamically linked.
    let me = std::fs::read(std::env::current_exe().expect("current_exe")).expect("read self");
    assert!(has_interpreter(&me), "this test binary has no PT_INTERP?");
}

#[test]
fn images_are_small_hold_only_the_binary_and_have_no_shell() {
    let imgs = images();
    let (netmon, agent) = (&imgs.netmon, &imgs.agent);
    let mut cleanup = Cleanup {
        containers: vec![],
        volumes: vec![],
    };
    for (image, bin) in [(netmon, "netmon"), (agent, "agent")] {
        let size: u64 = inspect(image, "{{.Size}}").parse().expect("image size");
        eprintln!("image {image}: {size} bytes");
        assert!(
            size < MAX_IMAGE_BYTES,
            "{image} is {size} bytes, over {MAX_IMAGE_BYTES}"
        );
        assert_eq!(
            inspect(image, "{{json .Config.Entrypoint}}"),
            format!("[\"/usr/bin/{bin}\"]")
        );
        assert_eq!(
            inspect(image, "{{json .Config.Healthcheck.Test}}"),
            format!("[\"CMD\",\"/usr/bin/{bin}\",\"health\"]")
        );
        assert_eq!(
            inspect(
                image,
                "{{index .Config.Labels \"org.opencontainers.image.title\"}}"
            ),
            bin
        );

        // Every file of the image: the binary, and only empty directories besides.
        let name = unique("exp");
        cleanup.containers.push(name.clone());
        must(&format!("docker create --name {name} {image} >/dev/null"));
        let files = must(&format!(
            "docker export {name} | tar -tvf - | awk '$1 !~ /^d/ {{print $6}}'"
        ));
        let files: Vec<&str> = files
            .lines()
            .filter(|f| {
                !matches!(
                    *f,
                    ".dockerenv"
                        | "etc/hostname"
                        | "etc/mtab"
                        | "etc/hosts"
                        | "etc/resolv.conf"
                        | "dev/console"
                        | "dev/pts/"
                        | "dev/shm/"
                        | "proc/"
                        | "sys/"
                )
            })
            .collect();
        assert_eq!(files, vec![format!("usr/bin/{bin}")], "files in {image}");

        // No shell to run.
        let sh_run = std::process::Command::new("docker")
            .args([
                "run",
                "--rm",
                "--entrypoint",
                "/bin/sh",
                image,
                "-c",
                "true",
            ])
            .output()
            .expect("docker run");
        assert!(
            !sh_run.status.success(),
            "{image} ran /bin/sh: {}",
            String::from_utf8_lossy(&sh_run.stdout)
        );
    }
}

fn volume_dir(volume: &str) -> PathBuf {
    PathBuf::from(
        must(&format!(
            "docker volume inspect -f '{{{{.Mountpoint}}}}' {volume}"
        ))
        .trim(),
    )
}

/// `docker stop` with a 20 s grace: returns how long it took and the exit code.
fn stop(container: &str) -> (Duration, i64) {
    let t0 = Instant::now();
    must(&format!("docker stop -t 20 {container} >/dev/null"));
    let took = t0.elapsed();
    let code = must(&format!(
        "docker inspect -f '{{{{.State.ExitCode}}}}' {container}"
    ))
    .trim()
    .parse()
    .expect("exit code");
    (took, code)
}

#[test]
fn netmon_container_is_healthy_and_as_pid_1_stops_on_sigterm_removing_its_socket() {
    let imgs = images();
    let netmon = &imgs.netmon;
    let name = unique("nmc");
    let volume = unique("nmv");
    let _cleanup = Cleanup {
        containers: vec![name.clone()],
        volumes: vec![volume.clone()],
    };
    must(&format!("docker volume create {volume} >/dev/null"));
    must(&format!(
        "docker run -d --name {name} --network host --cap-drop ALL --read-only \
         -v {volume}:/var/orchestrator {netmon} >/dev/null"
    ));
    let socket = volume_dir(&volume).join("netmon.sock");
    wait_for(
        Duration::from_secs(30),
        "netmon's socket in the volume",
        || socket.exists().then_some(()),
    );
    // The image's HEALTHCHECK runs `netmon health` inside: it turns healthy.
    wait_for(
        Duration::from_secs(60),
        "the netmon container healthy",
        || (health(&name) == "healthy").then_some(()),
    );

    // No grace-period kill: well under the 20 s docker would wait before SIGKILL.
    let (took, code) = stop(&name);
    assert_eq!(code, 0, "netmon's exit code after SIGTERM as PID 1");
    assert!(
        took < Duration::from_secs(15),
        "docker stop took {took:?}: SIGTERM was not handled by PID 1"
    );
    assert!(!socket.exists(), "netmon left {} behind", socket.display());
}

#[test]
fn agent_container_as_pid_1_stops_on_sigterm() {
    let imgs = images();
    let agent = &imgs.agent;
    let name = unique("agc");
    let volume = unique("agv");
    let _cleanup = Cleanup {
        containers: vec![name.clone()],
        volumes: vec![volume.clone()],
    };
    must(&format!("docker volume create {volume} >/dev/null"));
    must(&format!(
        "docker run -d --name {name} -e AGENT_CONTAINER={name} \
         -v {volume}:/var/orchestrator -v /var/run/docker.sock:/var/run/docker.sock {agent} >/dev/null"
    ));
    // Up and answering on its control socket (netmon is absent: it keeps trying).
    wait_for(
        Duration::from_secs(30),
        "the agent's control socket",
        || sh(&format!("docker exec {name} agent status >/dev/null 2>&1")).ok(),
    );
    let (took, code) = stop(&name);
    assert_eq!(code, 0, "the agent's exit code after SIGTERM as PID 1");
    assert!(
        took < Duration::from_secs(15),
        "docker stop took {took:?}: SIGTERM was not handled by PID 1"
    );
}

/// The tests' images never take the names a user's install uses
/// (`edgenet/<name>:<version>`): they have tags of their own, removed afterwards,
/// and an image a user has under the install's name is left as it was.
#[test]
fn test_images_have_tags_of_their_own_and_are_removed() {
    let version = env!("CARGO_PKG_VERSION");
    let id = |i: &str| {
        sh(&format!(
            "docker image inspect -f '{{{{.Id}}}}' {i} 2>/dev/null"
        ))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
    };
    let users = [
        format!("edgenet/netmon:{version}"),
        format!("edgenet/agent:{version}"),
    ];
    let before: Vec<String> = users.iter().map(|u| id(u)).collect();
    let imgs = own_images();
    let names = (imgs.netmon.clone(), imgs.agent.clone());
    for n in [&names.0, &names.1] {
        assert!(
            n.starts_with("edgenet-test/") && !users.contains(n),
            "test image named {n}"
        );
        assert!(!id(n).is_empty(), "{n} was not built");
    }
    drop(imgs);
    for n in [&names.0, &names.1] {
        assert!(id(n).is_empty(), "{n} left after the test");
    }
    let after: Vec<String> = users.iter().map(|u| id(u)).collect();
    assert_eq!(before, after, "a user's {users:?} changed");
}
