//! Our kernels' PTX, kept between runs. Opening a GPU needs PTX of every `kernels/*.cu` for the
//! device's architecture; NVRTC makes it (about a second of CPU for all files), once per kernel
//! source, NVRTC version, architecture and option set, and later runs read it from the cache
//! folder. The driver keeps its own cache of the machine code it makes from PTX.
//!
//! The folder is `$VECBUILD_KERNEL_CACHE` (empty: no cache), else
//! `$XDG_CACHE_HOME/vecbuild/kernels`, else `$HOME/.cache/vecbuild/kernels`. Each entry is one
//! file named by a hash of everything that shapes the PTX, written to a temporary name and
//! renamed into place, and ends with a hash of its own text: an entry that does not match it is
//! compiled again. The cache is an optimisation only: a folder that cannot be made or written
//! (a read-only home in a container) costs the compile, never an error.

use super::{nvrtc_compile, KERNELS};
use crate::Result;
use std::path::{Path, PathBuf};

/// Options NVRTC compiles the loaded PTX with (besides the architecture).
pub(super) const PTX_OPTIONS: &[&str] = &["--std=c++17", "--fmad=true"];

/// One kernel file's PTX, and whether it came from the cache.
#[derive(Debug, Clone)]
pub struct KernelPtx {
    pub file: &'static str,
    pub ptx: String,
    pub from_cache: bool,
}

/// The cache folder this process uses, or `None` (caching off; see the module docs).
pub fn dir() -> Option<PathBuf> {
    if let Some(v) = std::env::var_os("VECBUILD_KERNEL_CACHE") {
        return (!v.is_empty()).then(|| PathBuf::from(v));
    }
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => PathBuf::from(std::env::var_os("HOME").filter(|v| !v.is_empty())?).join(".cache"),
    };
    Some(base.join("vecbuild").join("kernels"))
}

/// PTX of every kernel file for `arch` (`compute_90`): cached entries from `cache`, the rest
/// compiled by NVRTC (files in parallel) and stored there.
pub fn kernel_ptx(arch: &str, cache: Option<&Path>) -> Result<Vec<KernelPtx>> {
    let version = nvrtc_version()?;
    std::thread::scope(|scope| {
        let jobs: Vec<_> = KERNELS
            .iter()
            .map(|&(file, src)| {
                scope.spawn(move || {
                    let path = cache.map(|d| entry_path(d, file, src, arch, version));
                    if let Some(ptx) = path.as_deref().and_then(read_entry) {
                        return Ok(KernelPtx {
                            file,
                            ptx,
                            from_cache: true,
                        });
                    }
                    let ptx = compile(file, src, arch)?;
                    if let Some(p) = &path {
                        write_entry(p, &ptx);
                    }
                    Ok(KernelPtx {
                        file,
                        ptx,
                        from_cache: false,
                    })
                })
            })
            .collect();
        jobs.into_iter()
            .map(|j| {
                j.join()
                    .unwrap_or_else(|_| Err(crate::Error::Gpu("kernel compile thread".into())))
            })
            .collect()
    })
}

/// PTX of kernel file `file` compiled by NVRTC for `arch`, bypassing the cache.
pub fn compile(file: &str, src: &str, arch: &str) -> Result<String> {
    let (ptx, _) = nvrtc_compile(src, file, arch, false)?;
    Ok(String::from_utf8_lossy(&ptx)
        .trim_end_matches('\0')
        .to_string())
}

/// Replaces the cached entry of `file` for `arch` by `ptx` (after a cached entry failed to
/// load); best effort.
pub fn store(cache: Option<&Path>, file: &str, arch: &str, ptx: &str) -> Result<()> {
    let src = KERNELS
        .iter()
        .find(|(f, _)| *f == file)
        .map(|(_, s)| *s)
        .unwrap_or_default();
    if let Some(d) = cache {
        write_entry(&entry_path(d, file, src, arch, nvrtc_version()?), ptx);
    }
    Ok(())
}

fn nvrtc_version() -> Result<(i32, i32)> {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: NVRTC writes two ints; the library is present (nvrtc_compile checks it first,
    // and so does the caller that opened a device).
    let r = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    if r != cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(super::gpu_err("reading the NVRTC version", r));
    }
    Ok((major, minor))
}

/// `<dir>/<file stem>-<arch>-<hash>.ptx`, the hash over everything that shapes the PTX.
fn entry_path(dir: &Path, file: &str, src: &str, arch: &str, nvrtc: (i32, i32)) -> PathBuf {
    let key = format!(
        "nvrtc {}.{}\0{arch}\0{}\0{file}\0{src}",
        nvrtc.0,
        nvrtc.1,
        PTX_OPTIONS.join(" ")
    );
    let stem = file.trim_end_matches(".cu");
    let hash = xxhash_rust::xxh3::xxh3_64(key.as_bytes());
    dir.join(format!("{stem}-{arch}-{hash:016x}.ptx"))
}

const TRAILER: &str = "\n// vecbuild kernel cache: xxh3 ";

/// The PTX of an entry whose trailer matches its text, else `None`.
fn read_entry(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let (ptx, hash) = text.rsplit_once(TRAILER)?;
    let want = format!("{:016x}\n", xxhash_rust::xxh3::xxh3_64(ptx.as_bytes()));
    (hash == want).then(|| ptx.to_string())
}

/// Writes an entry under a temporary name and renames it into place; failures are ignored.
fn write_entry(path: &Path, ptx: &str) {
    let Some(dir) = path.parent() else {
        return;
    };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let hash = xxhash_rust::xxh3::xxh3_64(ptx.as_bytes());
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let text = format!("{ptx}{TRAILER}{hash:016x}\n");
    if std::fs::write(&tmp, text).is_err() || std::fs::rename(&tmp, path).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_read_back_only_when_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = entry_path(dir.path(), "cagra.cu", "src", "compute_90", (13, 0));
        assert!(read_entry(&path).is_none());
        write_entry(&path, ".version 9.0\n.target sm_90\n");
        assert_eq!(
            read_entry(&path).as_deref(),
            Some(".version 9.0\n.target sm_90\n")
        );
        // A changed byte, or a cut file, is not an entry.
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("9.0\n.target", "9.1\n.target")).unwrap();
        assert!(read_entry(&path).is_none());
        std::fs::write(&path, &text[..text.len() - 5]).unwrap();
        assert!(read_entry(&path).is_none());
        // Source, architecture and NVRTC version each name another entry.
        let other = [
            entry_path(dir.path(), "cagra.cu", "src2", "compute_90", (13, 0)),
            entry_path(dir.path(), "cagra.cu", "src", "compute_80", (13, 0)),
            entry_path(dir.path(), "cagra.cu", "src", "compute_90", (13, 1)),
        ];
        for p in other {
            assert_ne!(p, path);
        }
        // A folder that cannot be made is no error.
        let blocked = dir.path().join("file");
        std::fs::write(&blocked, "x").unwrap();
        write_entry(&blocked.join("sub").join("e.ptx"), "ptx");
    }
}
