//! Binding the socket file safely: never take over a live socket, never replace
//! anything that is not a socket, permissions set before anyone can connect, and the
//! file removed at the end only while it is still the one we bound.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;
use tracing::{debug, info, warn};

use super::{ServerConfig, ServerError};

/// The socket file we bound, identified by device and inode. Dropping it removes the
/// file if the path still names that inode (a successor may have replaced it).
#[derive(Debug)]
pub(super) struct Bound {
    pub(super) path: PathBuf,
    id: Option<(u64, u64)>,
}

impl Bound {
    pub(super) fn remove(&mut self) {
        let Some(id) = self.id.take() else { return };
        match std::fs::symlink_metadata(&self.path) {
            Ok(md) if (md.dev(), md.ino()) == id => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    warn!(path = %self.path.display(), error = %e, "cannot remove the socket file");
                }
            }
            Ok(_) => {
                info!(path = %self.path.display(), "the socket file was replaced by someone else; left alone")
            }
            Err(e) => debug!(path = %self.path.display(), error = %e, "socket file already gone"),
        }
    }
}

impl Drop for Bound {
    fn drop(&mut self) {
        self.remove();
    }
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ServerError + 'a {
    move |error| ServerError::Io {
        what,
        path: path.to_path_buf(),
        error,
    }
}

fn socket_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn lookup_group(group: &Option<String>) -> Result<Option<u32>, ServerError> {
    let Some(g) = group else { return Ok(None) };
    match nix::unistd::Group::from_name(g) {
        Ok(Some(gr)) => Ok(Some(gr.gid.as_raw())),
        Ok(None) => Err(ServerError::UnknownGroup(g.clone())),
        Err(error) => Err(ServerError::GroupLookup {
            group: g.clone(),
            error,
        }),
    }
}

/// What is at `path` now: nothing, or a stale socket, is fine; everything else is
/// refused and left as it is.
fn check_existing(path: &Path, dir: &Path) -> Result<(), ServerError> {
    let md = match std::fs::symlink_metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("inspect", path)(e)),
    };
    if !md.file_type().is_socket() {
        return Err(ServerError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    // A blocking connect to a Unix socket never waits for the peer to accept: it
    // succeeds at once while a listener exists (even a busy one), and fails with
    // ECONNREFUSED when nobody listens.
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(ServerError::InUse(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            info!(path = %path.display(), "replacing a stale socket (nothing listens on it)");
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Err(ServerError::Permission {
            path: path.to_path_buf(),
            dir: dir.to_path_buf(),
        }),
        // EAGAIN: a listener whose backlog is full is alive.
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            Err(ServerError::InUse(path.to_path_buf()))
        }
        Err(e) => Err(io_err("probe the existing socket", path)(e)),
    }
}

/// Binds on a temporary name in the same directory, sets mode and group there, and
/// renames it over `cfg.path`: clients can only reach the socket once its
/// permissions are final, and the path never names a half-made socket.
pub(super) fn bind(cfg: &ServerConfig) -> Result<(UnixListener, Bound), ServerError> {
    let path = &cfg.path;
    let dir = socket_dir(path);
    if !dir.is_dir() {
        return Err(ServerError::NoDir(dir));
    }
    let gid = lookup_group(&cfg.group)?;
    check_existing(path, &dir)?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "socket".into());
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    // Our own leftover from a crashed run with the same pid, if any; only a socket.
    if std::fs::symlink_metadata(&tmp).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(&tmp);
    }
    let listener = UnixListener::bind(&tmp).map_err(|e| {
        if e.kind() == io::ErrorKind::PermissionDenied {
            ServerError::Permission {
                path: path.clone(),
                dir: dir.clone(),
            }
        } else {
            io_err("bind", &tmp)(e)
        }
    })?;
    let finish = || -> Result<(), ServerError> {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(cfg.mode))
            .map_err(io_err("set the mode of", &tmp))?;
        if let Some(gid) = gid {
            std::os::unix::fs::chown(&tmp, None, Some(gid))
                .map_err(io_err("set the group of", &tmp))?;
        }
        // Checked again right before the rename: rename replaces whatever is there.
        check_existing(path, &dir)?;
        std::fs::rename(&tmp, path).map_err(io_err("move the socket into place at", path))
    };
    if let Err(e) = finish() {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let id = std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()));
    info!(path = %path.display(), mode = format!("{:o}", cfg.mode), group = cfg.group.as_deref(), "listening");
    Ok((
        listener,
        Bound {
            path: path.clone(),
            id,
        },
    ))
}
