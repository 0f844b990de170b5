//! `vecbuild doctor`: what this vecbuild can use here.

/// Report the version, build features, CPU features, threads and GPU status.
#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

fn cpu_features() -> Vec<&'static str> {
    let mut found = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            found.push("avx2");
        }
        if std::arch::is_x86_feature_detected!("fma") {
            found.push("fma");
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            found.push("avx512f");
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("neon") {
            found.push("neon");
        }
    }
    found
}

pub fn run(args: DoctorArgs) -> anyhow::Result<()> {
    let features: Vec<&str> = [
        ("cli", cfg!(feature = "cli")),
        ("parquet", cfg!(feature = "parquet")),
    ]
    .iter()
    .filter(|(_, on)| *on)
    .map(|(n, _)| *n)
    .collect();
    let gpu =
        "CUDA backend not built yet: this vecbuild runs on the CPU only, and --gpu is refused";
    let cpu = cpu_features();
    let report = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "features": features,
        "arch": std::env::consts::ARCH,
        "cpu_features": cpu,
        "gemm_kernel": "gemm crate, runtime-dispatched SIMD",
        "threads": rayon::current_num_threads(),
        "backends": { "cpu": "available", "cuda": gpu },
    });
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        outln!("vecbuild {}", env!("CARGO_PKG_VERSION"));
        outln!("build features  {}", features.join(", "));
        outln!(
            "cpu             {} with {}",
            std::env::consts::ARCH,
            if cpu.is_empty() {
                "no SIMD extensions detected".into()
            } else {
                cpu.join(", ")
            }
        );
        outln!("threads         {}", rayon::current_num_threads());
        outln!("backend cpu     available");
        outln!("backend cuda    {gpu}");
    }
    Ok(())
}
