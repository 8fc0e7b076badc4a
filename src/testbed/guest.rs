//! The testbed's guest image: a Debian cloud kernel and a busybox initramfs whose /init prints a
//! heartbeat, sends bounded traffic to partners and can dirty memory (see `guest-init.sh`).
//!
//! Built only from Debian packages (`apt-get download`, `dpkg-deb -x`), cached under the cache
//! directory keyed by the package versions and the /init script, so a second run costs nothing.
//! No network access beyond apt; nothing here talks to libvirt.

use super::{TestbedError, run};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The guest's /init, embedded so the image depends only on this binary and Debian packages.
pub const INIT_SCRIPT: &str = include_str!("guest-init.sh");

/// Kernel modules the guest loads, in dependency order, for its virtio network card and its
/// memory balloon (whose statistics tell libvirt how much memory the guest uses).
const MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "failover",
    "net_failover",
    "virtio_net",
    "virtio_balloon",
];

/// A built guest image: boot it with `<kernel>`/`<initrd>` in the domain XML.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestImage {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// `<kernel package>_<version>+busybox_<version>+init_<hash>`.
    pub key: String,
}

/// Returns the cached guest image, building it first if the packages apt offers changed.
/// When apt cannot tell (no package lists, no mirror), falls back to the newest cached image.
pub fn ensure(cache: &Path) -> Result<GuestImage, TestbedError> {
    std::fs::create_dir_all(cache).map_err(|e| TestbedError::io(cache, e))?;
    let _lock = FileLock::acquire(&cache.join(".guest.lock"))?;
    let versions = match package_versions() {
        Ok(v) => v,
        Err(e) => {
            return newest_cached(cache).ok_or(e);
        }
    };
    let key = format!(
        "{}_{}+busybox_{}+init_{:016x}",
        versions.kernel_pkg,
        versions.kernel_ver,
        versions.busybox_ver,
        fnv1a(INIT_SCRIPT.as_bytes())
    )
    .replace([':', '/'], "_");
    let dir = cache.join(format!("guest-{key}"));
    let image = GuestImage {
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.gz"),
        key: key.clone(),
    };
    if image.kernel.is_file() && image.initrd.is_file() {
        return Ok(image);
    }
    build(cache, &dir, &versions)?;
    Ok(image)
}

struct Versions {
    kernel_pkg: String,
    kernel_ver: String,
    busybox_ver: String,
}

fn package_versions() -> Result<Versions, TestbedError> {
    let lookup = || -> Result<Versions, TestbedError> {
        let deps = run(
            Command::new("apt-cache").args(["depends", "linux-image-cloud-amd64"]),
            "find the Debian cloud kernel package",
        )?;
        let kernel_pkg = deps
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .find(|p| p.starts_with("linux-image-"))
            .ok_or_else(|| TestbedError::Guest {
                message: "apt-cache depends linux-image-cloud-amd64 names no linux-image package"
                    .into(),
            })?
            .to_string();
        let kernel_ver = candidate(&kernel_pkg)?;
        let busybox_ver = candidate("busybox-static")?;
        Ok(Versions {
            kernel_pkg,
            kernel_ver,
            busybox_ver,
        })
    };
    match lookup() {
        Ok(v) => Ok(v),
        // A machine whose packages came preinstalled may have no package lists yet.
        Err(_) => {
            run(
                Command::new("apt-get").args(["update", "-qq"]),
                "apt-get update (package lists for the guest image)",
            )?;
            lookup()
        }
    }
}

fn candidate(pkg: &str) -> Result<String, TestbedError> {
    let out = run(
        Command::new("apt-cache").args(["policy", pkg]),
        "read a package version",
    )?;
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Candidate: "))
        .find(|v| *v != "(none)")
        .map(str::to_string)
        .ok_or_else(|| TestbedError::Guest {
            message: format!("apt offers no version of {pkg}"),
        })
}

fn newest_cached(cache: &Path) -> Option<GuestImage> {
    let mut best: Option<(std::time::SystemTime, GuestImage)> = None;
    for entry in std::fs::read_dir(cache).ok()?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(key) = name.strip_prefix("guest-") else {
            continue;
        };
        let dir = entry.path();
        let image = GuestImage {
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initrd.gz"),
            key: key.to_string(),
        };
        let Ok(modified) = std::fs::metadata(&image.initrd).and_then(|m| m.modified()) else {
            continue;
        };
        if image.kernel.is_file() && best.as_ref().is_none_or(|(t, _)| modified > *t) {
            best = Some((modified, image));
        }
    }
    best.map(|(_, i)| i)
}

fn build(cache: &Path, dir: &Path, v: &Versions) -> Result<(), TestbedError> {
    let work = cache.join(format!("build-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let result = (|| {
        let debs = work.join("debs");
        std::fs::create_dir_all(&debs).map_err(|e| TestbedError::io(&debs, e))?;
        run(
            Command::new("apt-get")
                .current_dir(&debs)
                .arg("download")
                .arg(format!("{}={}", v.kernel_pkg, v.kernel_ver))
                .arg(format!("busybox-static={}", v.busybox_ver)),
            "apt-get download the guest's kernel and busybox",
        )?;
        let x = work.join("x");
        for deb in std::fs::read_dir(&debs).map_err(|e| TestbedError::io(&debs, e))? {
            let deb = deb.map_err(|e| TestbedError::io(&debs, e))?.path();
            run(
                Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&x),
                "unpack a guest package",
            )?;
        }
        let root = work.join("root");
        for d in ["bin", "dev", "proc", "sys", "tmp", "lib/modules"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(|e| TestbedError::io(&p, e))?;
        }
        copy(&x.join("bin/busybox"), &root.join("bin/busybox"), 0o755)?;
        let init = root.join("init");
        std::fs::write(&init, INIT_SCRIPT).map_err(|e| TestbedError::io(&init, e))?;
        chmod(&init, 0o755)?;
        let modules = find_dir(&x.join("lib/modules"))?;
        for m in MODULES {
            let found = find_file(&modules, &format!("{m}.ko"))?;
            copy(&found, &root.join(format!("lib/modules/{m}.ko")), 0o644)?;
        }
        let kernel = find_file(&x.join("boot"), "")?;
        let staged = work.join("out");
        std::fs::create_dir_all(&staged).map_err(|e| TestbedError::io(&staged, e))?;
        copy(&kernel, &staged.join("vmlinuz"), 0o644)?;
        run(
            Command::new("sh")
                .current_dir(&root)
                .arg("-c")
                .arg("find . | cpio -o -H newc --quiet | gzip -6 > ../out/initrd.gz"),
            "pack the guest initramfs (cpio, gzip)",
        )?;
        let _ = std::fs::remove_dir_all(dir);
        std::fs::rename(&staged, dir).map_err(|e| TestbedError::io(dir, e))
    })();
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<(), TestbedError> {
    std::fs::copy(from, to).map_err(|e| TestbedError::io(from, e))?;
    chmod(to, mode)
}

fn chmod(p: &Path, mode: u32) -> Result<(), TestbedError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .map_err(|e| TestbedError::io(p, e))
}

/// The single directory inside `dir` (the kernel's `lib/modules/<version>`).
fn find_dir(dir: &Path) -> Result<PathBuf, TestbedError> {
    std::fs::read_dir(dir)
        .map_err(|e| TestbedError::io(dir, e))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir())
        .ok_or_else(|| TestbedError::Guest {
            message: format!("{}: no kernel module directory", dir.display()),
        })
}

/// Finds `name` below `dir` (or, with an empty name, the `vmlinuz-*` file).
fn find_file(dir: &Path, name: &str) -> Result<PathBuf, TestbedError> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)
            .map_err(|e| TestbedError::io(&d, e))?
            .flatten()
        {
            let p = e.path();
            let f = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                stack.push(p);
            } else if (name.is_empty() && f.starts_with("vmlinuz-")) || f == name {
                return Ok(p);
            }
        }
    }
    Err(TestbedError::Guest {
        message: format!(
            "{}: no {} in the kernel package",
            dir.display(),
            if name.is_empty() { "vmlinuz" } else { name }
        ),
    })
}

/// 64-bit FNV-1a: a stable content hash for the cache key (std's hasher may change between
/// Rust releases, which would rebuild the image for nothing).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// An exclusive `flock` on a file, so parallel test processes build the image once.
struct FileLock(std::fs::File);

impl FileLock {
    fn acquire(path: &Path) -> Result<FileLock, TestbedError> {
        use std::os::fd::AsRawFd;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| TestbedError::io(path, e))?;
        // SAFETY: flock on a descriptor we own; released when the file closes.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(TestbedError::io(path, std::io::Error::last_os_error()));
        }
        Ok(FileLock(f))
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: unlocking the descriptor we locked.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_reference_vectors() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn init_script_loads_every_module_it_ships() {
        for m in MODULES {
            assert!(INIT_SCRIPT.contains(m), "{m} missing from guest-init.sh");
        }
    }
}
