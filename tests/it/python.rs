//! Interop with the Python ecosystem: `safetensors` opens an artifact, `pyarrow` reads results.
//! Runs `scripts/python_checks.py` with the interpreter in `VECBUILD_PYTHON` (CI sets it to a
//! venv with numpy, pyarrow and safetensors). Without it the test says so and passes, except
//! under CI, where a missing interpreter is a failure.

use crate::common::*;
use vecbuild::Ids;

#[test]
fn python_reads_artifacts_and_results() {
    let python = match std::env::var("VECBUILD_PYTHON") {
        Ok(p) => p,
        Err(_) => {
            assert!(
                std::env::var("CI").is_err(),
                "CI must set VECBUILD_PYTHON for the interop checks"
            );
            eprintln!(
                "skipped: VECBUILD_PYTHON is not set (a Python with numpy, pyarrow, safetensors)"
            );
            return;
        }
    };
    let dir = tmp();
    let d = dir.path();
    let n = 400;
    let base = ndarray::Array2::from_shape_vec((n, 12), data(n, 12, 21)).unwrap();
    vecbuild::io::npy::write(&d.join("base.npy"), base.view()).unwrap();
    let names: Vec<String> = (0..n).map(|i| format!("id-{i}")).collect();
    vecbuild::io::parquet::write_vectors(
        &d.join("base.parquet"),
        &Ids::from_strings(&names),
        base.view(),
        128,
    )
    .unwrap();
    let q = base.slice(ndarray::s![..10, ..]).to_owned();
    vecbuild::io::npy::write(&d.join("q.npy"), q.view()).unwrap();
    ok(
        d,
        &["build", "--input", "base.parquet", "--out", "base.vbx"],
    );
    ok(
        d,
        &[
            "search",
            "--index",
            "base.vbx",
            "--queries",
            "q.npy",
            "--k",
            "5",
            "--out",
            "results.parquet",
        ],
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/python_checks.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .arg(d)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "python checks failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
