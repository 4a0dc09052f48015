//! The lease store: `<state_dir>/dhcp_leases.json`, one object keyed by "runtime/vnic".
//!
//! Written atomically (temp file in the same directory, fsync, rename, fsync the
//! directory). A file that cannot be read is moved aside (never overwritten) and the
//! store starts empty: a lost lease record costs one DISCOVER instead of INIT-REBOOT,
//! while the unreadable copy stays for the operator.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::lease::LeaseRecord;

pub const LEASE_FILE: &str = "dhcp_leases.json";

#[derive(Debug, thiserror::Error)]
pub enum LeaseStoreError {
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is unreadable and cannot be moved aside: fix or remove it", .0.display())]
    Unreadable(PathBuf),
    #[error("cannot encode the lease store: {0}")]
    Encode(#[from] serde_json::Error),
}

pub struct LeaseStore {
    dir: PathBuf,
    leases: BTreeMap<String, LeaseRecord>,
    /// Where an unreadable file was moved at open, for status and logs.
    pub moved_aside: Option<PathBuf>,
}

impl LeaseStore {
    /// Opens (or starts) the store in `dir`.
    pub fn open(dir: &Path) -> Self {
        let mut s = LeaseStore {
            dir: dir.to_path_buf(),
            leases: BTreeMap::new(),
            moved_aside: None,
        };
        let path = s.path();
        let parsed = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| e.to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(e.to_string()),
        };
        match parsed {
            Ok(l) => s.leases = l,
            Err(error) => {
                s.moved_aside = s.move_aside();
                tracing::error!(path = %path.display(), %error, moved_to = ?s.moved_aside,
                    "lease store unreadable; moved aside, starting without cached leases");
            }
        }
        s
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(LEASE_FILE)
    }

    pub fn get(&self, key: &str) -> Option<&LeaseRecord> {
        self.leases.get(key)
    }

    pub fn all(&self) -> &BTreeMap<String, LeaseRecord> {
        &self.leases
    }

    pub fn put(&mut self, key: &str, lease: LeaseRecord) -> Result<(), LeaseStoreError> {
        let mut next = self.leases.clone();
        next.insert(key.to_string(), lease);
        self.commit(next)
    }

    /// Removes `key`; returns the record it held.
    pub fn remove(&mut self, key: &str) -> Result<Option<LeaseRecord>, LeaseStoreError> {
        let mut next = self.leases.clone();
        let old = next.remove(key);
        if old.is_some() {
            self.commit(next)?;
        }
        Ok(old)
    }

    fn commit(&mut self, next: BTreeMap<String, LeaseRecord>) -> Result<(), LeaseStoreError> {
        // Never replace what we cannot read (a file broken since open, or one that
        // could not be moved aside then).
        let path = self.path();
        if let Ok(bytes) = fs::read(&path) {
            if serde_json::from_slice::<BTreeMap<String, LeaseRecord>>(&bytes).is_err() {
                self.moved_aside = Some(
                    self.move_aside()
                        .ok_or(LeaseStoreError::Unreadable(path.clone()))?,
                );
            }
        }
        self.write(&next)?;
        self.leases = next;
        Ok(())
    }

    fn write(&self, leases: &BTreeMap<String, LeaseRecord>) -> Result<(), LeaseStoreError> {
        let mut bytes = serde_json::to_vec_pretty(leases)?;
        bytes.push(b'\n');
        crate::atomic_file::write(&self.dir, LEASE_FILE, &bytes)
            .map_err(|(what, path, source)| LeaseStoreError::Io { what, path, source })
    }

    fn move_aside(&self) -> Option<PathBuf> {
        crate::atomic_file::move_aside(&self.dir, LEASE_FILE)
    }
}
