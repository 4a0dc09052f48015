//! One atomic file write for the agent's state files (the vNIC store, the DHCP
//! leases): a temporary file in the same directory, fsync, rename into place, fsync
//! the directory. A failure leaves the old file as it was and no temporary behind.
//! And the moving aside of a state file that cannot be read, kept for the operator.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// What failed: the step, on which path, and why.
pub type Failure = (&'static str, PathBuf, io::Error);

/// Writes `bytes` as `dir/name`, creating `dir` when missing.
pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), Failure> {
    let at = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |e: io::Error| (what, path, e)
    };
    fs::create_dir_all(dir).map_err(at("create", dir))?;
    let target = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(at("create", &tmp))?;
        f.write_all(bytes).map_err(at("write", &tmp))?;
        f.sync_all().map_err(at("fsync", &tmp))?;
        fs::rename(&tmp, &target).map_err(at("rename into place", &target))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(at("fsync directory", dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Moves `dir/name` to a fresh `name.corrupt-<secs>.<n>`: links it there (a link
/// never replaces), then removes the original name. `None` (logged) if it cannot.
pub fn move_aside(dir: &Path, name: &str) -> Option<PathBuf> {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let path = dir.join(name);
    for n in 0..1000u32 {
        let dest = dir.join(format!("{name}.corrupt-{t}.{n}"));
        match fs::hard_link(&path, &dest) {
            Ok(()) => return fs::remove_file(&path).ok().map(|_| dest),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot move an unreadable state file aside");
                return None;
            }
        }
    }
    None
}
