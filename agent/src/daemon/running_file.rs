//! `<state_dir>/runtimes_running.json`: the runtimes to start if the agent finds them
//! stopped when the engine first answers (engine_stops.rs's memory, kept across an
//! agent restart or a host reboot). A sorted JSON array of runtime names, written
//! atomically and only when it changes.
//!
//! A missing file is an empty set. One that cannot be read is moved aside (as the
//! lease store does: losing it costs at most a runtime left stopped, never a vNIC)
//! and the set starts empty; if it cannot be moved aside either, it is never
//! overwritten and the memory is not kept until an operator removes it.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use tracing::{error, warn};

pub(super) const RUNNING_FILE: &str = "runtimes_running.json";

pub(super) struct RunningFile {
    dir: PathBuf,
    /// What the file holds now.
    written: BTreeSet<String>,
    /// An unreadable file that could not be moved aside: never written over.
    blocked: bool,
}

impl RunningFile {
    /// Opens the file in `dir`: the file and the set it holds.
    pub(super) fn open(dir: &Path) -> (RunningFile, BTreeSet<String>) {
        let path = dir.join(RUNNING_FILE);
        let parsed = match fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice::<BTreeSet<String>>(&bytes).map_err(|e| e.to_string())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeSet::new()),
            Err(e) => Err(e.to_string()),
        };
        let mut f = RunningFile {
            dir: dir.to_path_buf(),
            written: BTreeSet::new(),
            blocked: false,
        };
        match parsed {
            Ok(set) => f.written = set,
            Err(e) => {
                let moved = crate::atomic_file::move_aside(dir, RUNNING_FILE);
                f.blocked = moved.is_none();
                error!(path = %path.display(), error = %e, moved_to = ?moved,
                    "the runtimes last seen running are unreadable; starting without them (no runtime is started for an earlier engine stop)");
            }
        }
        let loaded = f.written.clone();
        (f, loaded)
    }

    /// Writes `set` if it differs from what the file holds.
    pub(super) fn save(&mut self, set: BTreeSet<String>) {
        if self.blocked || set == self.written {
            return;
        }
        let mut bytes = serde_json::to_vec(&set).unwrap_or_else(|_| b"[]".to_vec());
        bytes.push(b'\n');
        match crate::atomic_file::write(&self.dir, RUNNING_FILE, &bytes) {
            Ok(()) => self.written = set,
            Err((what, path, e)) => {
                warn!(%what, path = %path.display(), error = %e,
                    "cannot keep the runtimes last seen running; retrying on the next change")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_missing_file_is_empty_and_a_saved_set_is_loaded_back() {
        let dir = e2e::TempDir::new("rf");
        let (mut f, loaded) = RunningFile::open(dir.path());
        assert!(loaded.is_empty());
        f.save(BTreeSet::new());
        assert!(
            files(dir.path()).is_empty(),
            "nothing written without a change"
        );
        f.save(set(&["b", "a"]));
        let text = fs::read_to_string(dir.path().join(RUNNING_FILE)).unwrap();
        assert_eq!(text, "[\"a\",\"b\"]\n");
        let (_, again) = RunningFile::open(dir.path());
        assert_eq!(again, set(&["a", "b"]));
    }

    #[test]
    fn the_file_is_written_only_on_change() {
        let dir = e2e::TempDir::new("rf");
        let (mut f, _) = RunningFile::open(dir.path());
        f.save(set(&["a"]));
        let path = dir.path().join(RUNNING_FILE);
        // Another content on disk shows whether an equal save writes again.
        fs::write(&path, "[\"x\"]\n").unwrap();
        f.save(set(&["a"]));
        assert_eq!(fs::read_to_string(&path).unwrap(), "[\"x\"]\n");
        f.save(BTreeSet::new());
        assert_eq!(fs::read_to_string(&path).unwrap(), "[]\n");
        assert_eq!(files(dir.path()), vec![RUNNING_FILE.to_string()]);
    }

    #[test]
    fn an_unreadable_file_is_moved_aside_and_counts_as_empty() {
        let dir = e2e::TempDir::new("rf");
        let path = dir.path().join(RUNNING_FILE);
        fs::write(&path, "{not json").unwrap();
        let (mut f, loaded) = RunningFile::open(dir.path());
        assert!(loaded.is_empty());
        let names = files(dir.path());
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(names[0].starts_with("runtimes_running.json.corrupt-"));
        assert_eq!(
            fs::read_to_string(dir.path().join(&names[0])).unwrap(),
            "{not json"
        );
        f.save(set(&["a"]));
        assert_eq!(RunningFile::open(dir.path()).1, set(&["a"]));
    }

    #[test]
    fn an_unreadable_file_that_cannot_be_moved_aside_is_never_written_over() {
        let dir = e2e::TempDir::new("rf");
        // A directory by that name: reading fails, and so does linking it aside.
        fs::create_dir(dir.path().join(RUNNING_FILE)).unwrap();
        let (mut f, loaded) = RunningFile::open(dir.path());
        assert!(loaded.is_empty());
        f.save(set(&["a"]));
        assert!(dir.path().join(RUNNING_FILE).is_dir());
        assert_eq!(files(dir.path()), vec![RUNNING_FILE.to_string()]);
    }
}
