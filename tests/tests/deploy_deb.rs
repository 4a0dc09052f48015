//! The Debian package and `install.sh --mode systemd`, on this machine for real:
//! `dpkg -i`, the files, the units (verified in place), the netmon user and group,
//! the units enabled by the maintainer scripts; systemd is not PID 1 here, so the
//! scripts must skip starting them and say so; `dpkg --purge` leaves nothing.

use std::path::Path;
use std::process::Command;

use e2e::deploy::{build_deb, packaging, run, system_lock};
use e2e::{TempDir, must, sh};

const FILES: &[&str] = &[
    "/usr/bin/netmon",
    "/usr/bin/agent",
    "/usr/lib/systemd/system/netmon.service",
    "/usr/lib/systemd/system/agent.service",
    "/usr/lib/sysusers.d/netmon.conf",
    "/usr/share/doc/edgenet/README.md",
];
const WANTS: &str = "/etc/systemd/system/multi-user.target.wants";

/// Marks the package as installed by a test, so a later run may purge what a
/// killed run left, and never a user's own install.
const TEST_MARK: &str = "/var/tmp/edgenet-test-installed-deb";

/// Purges the package on drop (also when the test fails half way). Made (with
/// the [`system_lock`] held) before the test installs anything: an edgenet that
/// a test did not install is refused, not replaced.
struct Purge;

impl Purge {
    fn new() -> Purge {
        if installed() || sh("dpkg-query -W edgenet >/dev/null 2>&1").is_ok() {
            assert!(
                Path::new(TEST_MARK).exists(),
                "edgenet is installed on this host, not by a test: the package tests would \
                 replace it. Remove it (dpkg --purge edgenet) or run them on another host"
            );
            // A test run killed half way left it.
            must("dpkg --purge edgenet >/dev/null 2>&1 || true");
        }
        std::fs::write(TEST_MARK, "installed by tests/tests/deploy_deb.rs\n")
            .unwrap_or_else(|e| panic!("write {TEST_MARK}: {e}"));
        Purge
    }
}

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = sh("dpkg --purge edgenet >/dev/null 2>&1");
        let _ = std::fs::remove_file(TEST_MARK);
    }
}

fn installed() -> bool {
    sh("dpkg-query -W -f='${db:Status-Abbrev}' edgenet 2>/dev/null")
        .map(|s| s.starts_with("ii"))
        .unwrap_or(false)
}

fn assert_installed() {
    assert!(installed(), "edgenet is not installed");
    for f in FILES {
        assert!(Path::new(f).exists(), "{f} missing after install");
    }
    for b in ["netmon", "agent"] {
        let out = Command::new(format!("/usr/bin/{b}"))
            .arg("--help")
            .output()
            .expect("run the installed binary");
        assert!(out.status.success(), "/usr/bin/{b} --help failed");
    }
    assert!(sh("getent group netmon").is_ok(), "group netmon missing");
    assert!(sh("getent passwd netmon").is_ok(), "user netmon missing");
    for u in ["netmon.service", "agent.service"] {
        let link = Path::new(WANTS).join(u);
        assert!(
            link.is_symlink(),
            "{} missing: the maintainer scripts did not enable {u}",
            link.display()
        );
    }
    // The installed units verify with their binaries in place.
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no", "netmon.service", "agent.service"])
        .output()
        .expect("systemd-analyze");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.trim().is_empty(),
        "systemd-analyze verify of the installed units: {} {err}",
        out.status
    );
}

fn assert_gone() {
    assert!(!installed(), "edgenet still installed");
    for f in FILES {
        assert!(!Path::new(f).exists(), "{f} left after purge");
    }
    for u in ["netmon.service", "agent.service"] {
        assert!(
            !Path::new(WANTS).join(u).is_symlink(),
            "{u} still enabled after purge"
        );
        assert!(
            !Path::new("/var/lib/systemd/deb-systemd-helper-enabled")
                .join(u)
                .exists(),
            "deb-systemd-helper state for {u} left after purge"
        );
    }
    assert!(
        sh("getent group netmon").is_err(),
        "group netmon left after purge"
    );
    assert!(
        sh("getent passwd netmon").is_err(),
        "user netmon left after purge"
    );
}

#[test]
fn deb_installs_enables_the_units_and_purges_cleanly() {
    let _lock = system_lock();
    let _purge = Purge::new();

    let out = TempDir::new("deb");
    let deb = build_deb(&out);
    let contents = must(&format!("dpkg-deb -c {deb}"));
    for f in FILES {
        assert!(
            contents.contains(&format!(".{f}")),
            "{f} not in the package: {contents}"
        );
    }
    let info = must(&format!("dpkg-deb -f {deb} Package Version Architecture"));
    assert!(info.contains("Package: edgenet"), "{info}");

    let inst =
        run(Command::new("dpkg").args(["-i", &deb])).unwrap_or_else(|e| panic!("dpkg -i: {e:#}"));
    let said = String::from_utf8_lossy(&inst.stdout);
    assert!(
        said.contains("systemd is not running") && said.contains("not started"),
        "postinst did not say why the units were not started: {said}"
    );
    assert_installed();

    // Removing keeps nothing running nor any binary; purge takes the rest.
    run(Command::new("dpkg").args(["--remove", "edgenet"]))
        .unwrap_or_else(|e| panic!("dpkg --remove: {e:#}"));
    assert!(!Path::new("/usr/bin/netmon").exists());
    run(Command::new("dpkg").args(["--purge", "edgenet"]))
        .unwrap_or_else(|e| panic!("dpkg --purge: {e:#}"));
    assert_gone();
}

#[test]
fn install_script_systemd_mode_is_idempotent_and_says_why_units_are_not_started() {
    let _lock = system_lock();
    let _purge = Purge::new();

    // One package for both runs: a rebuild in between (sources edited meanwhile)
    // would rightly count as a change.
    let dir = TempDir::new("deb");
    let deb = build_deb(&dir);
    let config = TempDir::new("icd");
    let env_file = config.join("edgenet.env");
    let install = || install_sh(&config, &["--mode", "systemd", "--deb", &deb]);
    let first = install();
    let said = first.as_str();
    assert!(said.contains("installed edgenet"), "{said}");
    assert!(
        said.contains("systemd is not the running init") && said.contains("NOT started"),
        "the reason the units were not started is not said: {said}"
    );
    assert_installed();

    let second = install();
    let said = second.as_str();
    assert!(
        said.contains("already installed and unchanged"),
        "a second run did not see the installed package: {said}"
    );
    assert!(!said.contains("dpkg:"), "a second run reinstalled: {said}");
    assert_installed();
    assert!(
        std::fs::read_to_string(&env_file).is_ok_and(|t| t.contains("EDGENET_MODE=systemd")),
        "install.sh did not record the install in {}",
        env_file.display()
    );

    let said = install_sh(&config, &["--uninstall"]);
    assert!(said.contains("purged edgenet"), "{said}");
    assert_gone();
    assert!(!env_file.exists(), "{} left: {said}", env_file.display());
}

/// Removes what `install.sh --from binaries` put in place (it has no package to
/// purge), also when the test fails half way.
struct RemoveBinaryInstall;

const BINARY_INSTALL: &[&str] = &[
    "/usr/bin/netmon",
    "/usr/bin/agent",
    "/etc/systemd/system/netmon.service",
    "/etc/systemd/system/agent.service",
    "/etc/systemd/system/multi-user.target.wants/netmon.service",
    "/etc/systemd/system/multi-user.target.wants/agent.service",
    "/usr/lib/sysusers.d/netmon.conf",
];

impl Drop for RemoveBinaryInstall {
    fn drop(&mut self) {
        for f in BINARY_INSTALL {
            let _ = std::fs::remove_file(f);
        }
        let _ = sh("userdel netmon 2>/dev/null; groupdel netmon 2>/dev/null");
    }
}

#[test]
fn install_script_systemd_mode_from_binaries_is_idempotent() {
    let _lock = system_lock();
    let _purge = Purge::new();
    for f in BINARY_INSTALL {
        assert!(
            !Path::new(f).exists(),
            "{f} exists before the test: not installing over it"
        );
    }
    let _remove = RemoveBinaryInstall;
    let config = TempDir::new("icb");
    let install = || install_sh(&config, &["--mode", "systemd", "--from", "binaries"]);

    let said = install();
    for f in BINARY_INSTALL {
        assert!(Path::new(f).exists(), "{f} not installed: {said}");
    }
    assert!(said.contains("installed /usr/bin/netmon"), "{said}");
    assert!(said.contains("created system group netmon"), "{said}");
    assert!(said.contains("enabled netmon.service"), "{said}");
    assert!(said.contains("NOT started"), "{said}");
    assert!(sh("getent group netmon").is_ok() && sh("getent passwd netmon").is_ok());
    // The units as installed verify with their binaries in place.
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no", "netmon.service", "agent.service"])
        .output()
        .expect("systemd-analyze");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.trim().is_empty(),
        "systemd-analyze verify: {} {err}",
        out.status
    );

    let again = install();
    assert!(again.contains("/usr/bin/netmon unchanged"), "{again}");
    assert!(
        again.contains("/etc/systemd/system/agent.service unchanged"),
        "{again}"
    );
    assert!(again.contains("group netmon exists"), "{again}");
    assert!(again.contains("agent.service already enabled"), "{again}");
    assert!(
        !again.contains("installed /"),
        "a second run installed again: {again}"
    );

    // --uninstall removes every file it copied, and the user and group.
    let said = install_sh(&config, &["--uninstall"]);
    for f in BINARY_INSTALL {
        assert!(!Path::new(f).exists(), "{f} left after --uninstall: {said}");
    }
    assert!(
        sh("getent passwd netmon").is_err(),
        "user netmon left: {said}"
    );
    assert!(
        sh("getent group netmon").is_err(),
        "group netmon left: {said}"
    );
    assert!(
        !config.join("edgenet.env").exists(),
        "edgenet.env left: {said}"
    );
}

/// `install.sh` with `--config-dir` in a directory of the test's own, so a
/// user's /etc/edgenet is never written.
fn install_sh(config: &TempDir, args: &[&str]) -> String {
    let out = run(Command::new(packaging("install.sh"))
        .args(args)
        .arg("--config-dir")
        .arg(config.path()))
    .unwrap_or_else(|e| panic!("install.sh {args:?}: {e:#}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}
