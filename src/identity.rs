//! The host's libp2p identity: an Ed25519 key kept in a file only root can read, whose public
//! half (the PeerId) the operator copies into the topology file. `scored keygen` writes it; the
//! daemon loads it. Nothing else here.

use libp2p::identity::Keypair;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Default location of the host key.
pub const DEFAULT_KEY_PATH: &str = "/etc/scored/host.key";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("{path}: not a scored host key ({message}); write a new one with `scored keygen`")]
    Invalid { path: String, message: String },
    #[error("{path} already exists; pass --force to replace it (the host's PeerId will change)")]
    Exists { path: String },
}

/// Generates a new Ed25519 key and writes it to `path` (mode 0600). Refuses to overwrite an
/// existing key unless `force`: a new key is a new PeerId, which every topology file must learn.
pub fn generate(path: &Path, force: bool) -> Result<Keypair, IdentityError> {
    let p = path.display().to_string();
    if path.exists() && !force {
        return Err(IdentityError::Exists { path: p });
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| IdentityError::Io {
            path: dir.display().to_string(),
            message: format!("cannot create directory: {e}"),
        })?;
    }
    let key = Keypair::generate_ed25519();
    let bytes = key
        .to_protobuf_encoding()
        .map_err(|e| IdentityError::Invalid {
            path: p.clone(),
            message: e.to_string(),
        })?;
    // Write beside, then rename: a crash never leaves a half-written key.
    let tmp = path.with_extension("key.tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| IdentityError::Io {
        path: p,
        message: format!("cannot write key: {e}"),
    })?;
    Ok(key)
}

/// Loads the host key written by [`generate`].
pub fn load(path: &Path) -> Result<Keypair, IdentityError> {
    let p = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| IdentityError::Io {
        path: p.clone(),
        message: format!("cannot read host key: {e}"),
    })?;
    if bytes.len() > 4096 {
        return Err(IdentityError::Invalid {
            path: p,
            message: format!("{} bytes is too large for a key", bytes.len()),
        });
    }
    Keypair::from_protobuf_encoding(&bytes).map_err(|e| IdentityError::Invalid {
        path: p,
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generate_then_load_gives_the_same_peer_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/host.key");
        let k = generate(&path, false).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let l = load(&path).unwrap();
        assert_eq!(k.public().to_peer_id(), l.public().to_peer_id());
        assert!(matches!(
            generate(&path, false),
            Err(IdentityError::Exists { .. })
        ));
        let k2 = generate(&path, true).unwrap();
        assert_ne!(k2.public().to_peer_id(), k.public().to_peer_id());
        std::fs::write(&path, b"garbage").unwrap();
        assert!(matches!(load(&path), Err(IdentityError::Invalid { .. })));
    }
}
