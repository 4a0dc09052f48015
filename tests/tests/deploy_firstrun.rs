//! A first install as a new user meets it: the README's two commands as written
//! (the test command is the one CI runs; the main job shows its build and cleans
//! up), its links staying inside the repository, logs in a pipe without colour
//! codes, and `netmon watch` waiting for a socket that is not there yet.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use e2e::deploy::repo_root;
use e2e::{ChildGuard, TempDir, bin, require_root, wait_for};
use nix::sys::signal::Signal;

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The fenced `sh` block that follows the first line containing `after`.
fn block_after(text: &str, after: &str) -> Vec<String> {
    let start = text
        .find(after)
        .unwrap_or_else(|| panic!("README has no {after:?}"));
    text[start..]
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .map(|b| b.lines().map(str::to_string).collect())
        .unwrap_or_else(|| panic!("no sh block after {after:?}"))
}

#[test]
fn readme_commands_run_as_root_without_sudo_and_the_test_command_is_what_ci_runs() {
    let readme = read(&repo_root().join("README.md"));
    assert!(
        !readme.contains("sudo "),
        "the README uses sudo, absent on minimal hosts"
    );
    assert_eq!(
        block_after(&readme, "Run the main job"),
        vec!["./scripts/run-local.sh"]
    );
    let test = block_after(&readme, "Run the whole test suite");
    assert_eq!(test, vec!["./scripts/test.sh"]);
    let ci = read(&repo_root().join(".ci/run"));
    assert!(
        ci.lines().any(|l| l.trim() == test[0]),
        ".ci/run does not run the README's test command {:?}",
        test[0]
    );
    // The test command installs what .ci/run used to (and nextest) before running.
    let script = read(&repo_root().join("scripts/test.sh"));
    for want in [
        "dnsmasq-base",
        "busybox-static",
        "docker-compose",
        "mmdebstrap",
        "cargo install cargo-nextest",
        "cargo nextest run --workspace --locked --no-fail-fast",
    ] {
        assert!(script.contains(want), "scripts/test.sh lacks {want}");
    }
}

/// Markdown link targets `[text](target)` in `text`.
fn links(text: &str) -> Vec<String> {
    text.split("](")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .map(str::to_string)
        .collect()
}

#[test]
fn readme_and_docs_links_resolve_inside_the_repository() {
    let root = repo_root().canonicalize().expect("repo root");
    let mut files = vec![root.join("README.md")];
    if let Ok(dir) = std::fs::read_dir(root.join("docs")) {
        files.extend(dir.filter_map(|e| e.ok().map(|e| e.path())));
    }
    let mut checked = 0;
    for f in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "md"))
    {
        for l in links(&read(f)) {
            let target = l.split('#').next().unwrap_or("");
            if target.is_empty() || target.contains("://") {
                assert!(
                    !target.contains("://") || !target.contains("localhost"),
                    "{}: link {l}",
                    f.display()
                );
                continue;
            }
            let p: PathBuf = f.parent().expect("parent").join(target);
            let resolved = p
                .canonicalize()
                .unwrap_or_else(|e| panic!("{}: link {l} does not resolve: {e}", f.display()));
            assert!(
                resolved.starts_with(&root),
                "{}: link {l} leaves the repository ({})",
                f.display(),
                resolved.display()
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "no relative link checked");
    assert!(
        read(&root.join("README.md")).contains("](docs/PROTOCOL.md)"),
        "the README does not link the protocol"
    );
}

/// Lines from a reader, on a channel (so a test can wait with a limit).
fn lines_of(r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    rx
}

/// Receives lines until one satisfies `want`; all lines seen so far.
fn until(rx: &mpsc::Receiver<String>, limit: Duration, want: impl Fn(&str) -> bool) -> Vec<String> {
    let end = std::time::Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        let left = end.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => {
                let done = want(&l);
                seen.push(l);
                if done {
                    return seen;
                }
            }
            Err(_) => panic!("timed out after {limit:?}; saw {seen:?}"),
        }
    }
}

fn netmon(socket: &Path, format: &str) -> (ChildGuard, mpsc::Receiver<String>) {
    let mut child = Command::new(bin("netmon"))
        .arg("--socket")
        .arg(socket)
        .args(["--log-format", format, "--log-level", "debug"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn netmon");
    let err = child.stderr.take().expect("stderr");
    (ChildGuard(Some(child)), lines_of(err))
}

#[test]
fn logs_written_to_a_pipe_carry_no_escape_codes() {
    let dir = TempDir::new("nlg");
    for format in ["text", "json"] {
        let socket = dir.join(&format!("{format}.sock"));
        let (_netmon, rx) = netmon(&socket, format);
        let seen = until(&rx, Duration::from_secs(20), |l| l.contains("netmon ready"));
        for l in &seen {
            assert!(
                !l.contains('\x1b'),
                "--log-format {format} to a pipe has escape codes: {l:?}"
            );
        }
        assert!(seen.len() > 1, "{seen:?}");
    }
}

#[test]
fn netmon_watch_on_a_missing_socket_says_it_waits_and_connects_when_it_appears() {
    let dir = TempDir::new("nwt");
    let socket = dir.join("netmon.sock");
    let mut watch = Command::new(bin("netmon"))
        .arg("watch")
        .arg("--socket")
        .arg(&socket)
        .env_remove("NETMON_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn netmon watch");
    let (out, err) = (
        lines_of(watch.stdout.take().expect("stdout")),
        lines_of(watch.stderr.take().expect("stderr")),
    );
    let _watch = ChildGuard(Some(watch));
    let said = until(&err, Duration::from_secs(10), |l| l.contains("waiting for"));
    assert!(
        said.last()
            .is_some_and(|l| l.contains(&socket.display().to_string())),
        "{said:?}"
    );
    // Nothing else while there is no netmon.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        out.try_recv().is_err(),
        "watch printed an event without netmon"
    );

    let (_netmon, _logs) = netmon(&socket, "text");
    until(&err, Duration::from_secs(10), |l| {
        l.starts_with("connected to")
    });
    until(&out, Duration::from_secs(10), |l| {
        l.contains("network_discovery")
    });
}

#[test]
fn run_local_as_written_shows_its_build_serves_and_removes_its_directory_on_exit() {
    require_root();
    e2e::agent::require_engine();
    let mut child = Command::new("./scripts/run-local.sh")
        .current_dir(repo_root())
        .env_remove("EDGENET_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn scripts/run-local.sh");
    let (out, err) = (
        lines_of(child.stdout.take().expect("stdout")),
        lines_of(child.stderr.take().expect("stderr")),
    );
    let mut script = ChildGuard(Some(child));
    // Says it builds before the (possibly long) build.
    until(&err, Duration::from_secs(30), |l| {
        l.contains("run-local: building")
    });
    let said = until(&out, Duration::from_secs(600), |l| {
        l.starts_with("Running with sockets and state in ")
    });
    let dir = said
        .last()
        .and_then(|l| l.strip_prefix("Running with sockets and state in "))
        .and_then(|l| l.split_whitespace().next())
        .map(PathBuf::from)
        .expect("the directory");
    assert!(
        dir.display().to_string().starts_with("/tmp/edgenet."),
        "{}",
        dir.display()
    );
    // The commands it prints work.
    let socket = dir.join("netmon.sock");
    wait_for(
        Duration::from_secs(30),
        "netmon health on run-local's socket",
        || {
            Command::new(dir.join("bin/netmon"))
                .args(["health", "--socket"])
                .arg(&socket)
                .status()
                .ok()
                .filter(|s| s.success())
        },
    );
    wait_for(
        Duration::from_secs(30),
        "agent status on run-local's socket",
        || {
            Command::new(dir.join("bin/agent"))
                .arg("status")
                .arg("--control-socket")
                .arg(dir.join("agent.sock"))
                .stdout(Stdio::null())
                .status()
                .ok()
                .filter(|s| s.success())
        },
    );

    // Ctrl-C: both daemons stop and the directory goes.
    script.signal(Signal::SIGINT);
    let st = script
        .wait_timeout(Duration::from_secs(30))
        .expect("run-local.sh exits after SIGINT");
    assert!(!st.success() || st.code() == Some(0), "{st}");
    until(&err, Duration::from_secs(5), |l| l.contains("removed"));
    assert!(!dir.exists(), "{} left after exit", dir.display());
    // No process runs from the directory any more (read /proc: a pgrep would
    // match its own command line).
    let needle = dir.display().to_string();
    let left: Vec<String> = std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&needle))
        .collect();
    assert!(left.is_empty(), "processes left: {left:?}");
}
