//! The host emulator of the CUDA libraries (tests/emu/emulator.cpp), built once per test run:
//! with its folder first on `LD_LIBRARY_PATH`, `vecbuild --gpu 0` runs its whole GPU code path
//! with our kernels on host threads. The GPU tests (tests/it/cuda.rs) run on it where there is
//! no GPU, on small data; it proves results, never speed.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// `kernels/<file>` as the host runtime compiles it: dynamic shared memory is the runtime's
/// one array.
pub fn adapted_kernel(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("kernels")
        .join(file);
    let source = std::fs::read_to_string(&path).unwrap();
    let mut adapted = String::new();
    for line in source.lines() {
        match line.trim().strip_prefix("extern __shared__ ") {
            Some(decl) => {
                let (ty, name) = decl.trim_end_matches("[];").rsplit_once(' ').unwrap();
                adapted += &format!("{ty}* {name} = reinterpret_cast<{ty}*>(dyn_smem);\n");
            }
            None => adapted += &format!("{line}\n"),
        }
    }
    adapted
}

/// The C++ compiler's command, or `None` (and a skip message) where there is none and CI does
/// not require one.
pub fn cxx() -> Option<String> {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    match Command::new(&cxx).arg("--version").output() {
        Ok(_) => Some(cxx),
        Err(e) if std::env::var_os("VECBUILD_REQUIRE_NVRTC").is_none() => {
            eprintln!("SKIPPED: no C++ compiler ({cxx}: {e}); CI requires one");
            None
        }
        Err(e) => panic!("no C++ compiler ({cxx}: {e})"),
    }
}

/// The names of the kernels (`extern "C" __global__`) a kernel file defines.
fn kernel_names(source: &str) -> Vec<String> {
    let mut names = Vec::new();
    for part in source.split("extern \"C\" __global__").skip(1) {
        let name = part
            .split('(')
            .map(|s| {
                s.rsplit(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .next()
                    .unwrap_or("")
            })
            .find(|n| !n.is_empty() && *n != "__launch_bounds__")
            .unwrap_or("");
        names.push(name.to_string());
    }
    names
}

/// The folder holding the emulator as libcuda.so, libcublas.so and libnvrtc.so, built on first
/// use; `None` where there is no C++ compiler (and CI does not require one).
pub fn emulator() -> Option<&'static Path> {
    static BUILT: OnceLock<Option<PathBuf>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cxx = cxx()?;
            let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cuda-emulator");
            std::fs::create_dir_all(&dir).unwrap();
            let emu = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests")
                .join("emu");
            let (mut sources, mut registry) = (String::new(), String::new());
            for (file, _) in vecbuild::backend::cuda::KERNELS {
                let adapted = adapted_kernel(file);
                for name in kernel_names(&adapted) {
                    registry += &format!("{{\"{name}\", launcher(&{name})}},\n");
                }
                sources += &adapted;
            }
            std::fs::write(dir.join("kernels.inc"), sources).unwrap();
            std::fs::write(dir.join("registry.inc"), registry).unwrap();
            let lib = dir.join("libvecbuild-emulator.so");
            let out = Command::new(&cxx)
                .args(["-std=c++20", "-O2", "-shared", "-fPIC", "-pthread"])
                .args(["-ffp-contract=off", "-Wno-unknown-pragmas", "-I"])
                .arg(&dir)
                .arg("-I")
                .arg(&emu)
                .arg("-o")
                .arg(&lib)
                .arg(emu.join("emulator.cpp"))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{cxx} could not build the CUDA emulator:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            for name in ["libcuda.so", "libcublas.so", "libnvrtc.so"] {
                let link = dir.join(name);
                let _ = std::fs::remove_file(&link);
                std::os::unix::fs::symlink(&lib, &link).unwrap();
            }
            Some(dir)
        })
        .as_deref()
}

thread_local! {
    /// The emulator's folder while this test thread runs vecbuild on it ([`on_emulator`]).
    static ACTIVE: RefCell<Option<PathBuf>> = const { RefCell::new(None) };
    /// The emulated device's memory in MiB, where a test set it ([`device_memory`]).
    static DEVICE_MIB: RefCell<Option<usize>> = const { RefCell::new(None) };
    /// Variables this test sets (`Some`) or removes (`None`) in vecbuild's environment
    /// ([`set_env`]).
    static ENV: RefCell<Vec<(&'static str, Option<String>)>> = const { RefCell::new(Vec::new()) };
}

/// From now on, this test's runs of vecbuild ([`crate::common::run`]), on the emulator or not,
/// see `key` set to `value`, or not at all (`None`), whatever the test runner's environment.
pub fn set_env(key: &'static str, value: Option<&str>) {
    ENV.with(|e| {
        let mut e = e.borrow_mut();
        e.retain(|(k, _)| *k != key);
        e.push((key, value.map(str::to_string)));
    });
}

/// From now on, this test's runs of vecbuild on the emulator see a device of `mib` MiB.
pub fn device_memory(mib: usize) {
    DEVICE_MIB.with(|m| *m.borrow_mut() = Some(mib));
}

/// From now on, this test's runs of vecbuild ([`crate::common::run`]) use the emulator.
pub fn on_emulator(dir: &Path) {
    ACTIVE.with(|a| *a.borrow_mut() = Some(dir.to_path_buf()));
}

/// Whether this test thread runs vecbuild on the emulator.
pub fn emulated() -> bool {
    ACTIVE.with(|a| a.borrow().is_some())
}

/// Sets `cmd`'s environment for the emulator when this test thread uses it: its folder first on
/// the library path, the kernel cache off (its "PTX" names files, nothing more); and the
/// variables a test set ([`set_env`]).
pub fn environment(cmd: &mut Command) {
    ENV.with(|e| {
        for (key, value) in e.borrow().iter() {
            match value {
                Some(v) => cmd.env(key, v),
                None => cmd.env_remove(key),
            };
        }
    });
    ACTIVE.with(|a| {
        if let Some(dir) = a.borrow().as_ref() {
            let path = std::env::var("LD_LIBRARY_PATH").unwrap_or_default();
            cmd.env("LD_LIBRARY_PATH", format!("{}:{path}", dir.display()))
                .env("VECBUILD_KERNEL_CACHE", "");
            if let Some(mib) = DEVICE_MIB.with(|m| *m.borrow()) {
                cmd.env("VECBUILD_EMULATED_DEVICE_MIB", mib.to_string());
            }
        }
    });
}
