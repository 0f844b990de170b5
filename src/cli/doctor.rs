//! `vecbuild doctor`: what this vecbuild can use here.

/// Report the version, build features, CPU features, threads and GPU status.
#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,

    /// Compile every kernel to cubins for these GPU architectures through NVRTC (no GPU
    /// needed), print ptxas' registers and spills per kernel, and fail on errors or spills.
    #[arg(long, value_name = "ARCHS", value_delimiter = ',')]
    pub check_kernels: Vec<String>,
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
        ("cuda", cfg!(feature = "cuda")),
    ]
    .iter()
    .filter(|(_, on)| *on)
    .map(|(n, _)| *n)
    .collect();
    if !args.check_kernels.is_empty() {
        return check_kernels(&args.check_kernels);
    }
    let (gpu, gpu_lines) = cuda_report();
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
        for line in gpu_lines {
            outln!("{line}");
        }
    }
    Ok(())
}

#[cfg(feature = "cuda")]
fn check_kernels(archs: &[String]) -> anyhow::Result<()> {
    let mut spills = Vec::new();
    for arch in archs {
        for k in vecbuild::backend::cuda::check_kernels(arch)? {
            outln!(
                "{arch}  kernels/{}  {}  {} registers, {} bytes spill stores, {} bytes spill loads",
                k.file,
                k.function,
                k.registers,
                k.spill_stores,
                k.spill_loads
            );
            if k.spill_stores > 0 || k.spill_loads > 0 {
                spills.push(format!("{} for {arch}", k.function));
            }
        }
    }
    if spills.is_empty() {
        Ok(())
    } else {
        Err(vecbuild::Error::Gpu(format!("registers spill in {}", spills.join(", "))).into())
    }
}

#[cfg(not(feature = "cuda"))]
fn check_kernels(_archs: &[String]) -> anyhow::Result<()> {
    Err(vecbuild::Error::Gpu("this vecbuild was built without the `cuda` feature".into()).into())
}

/// The CUDA backend's state as JSON, and as lines for the text report.
#[cfg(feature = "cuda")]
fn cuda_report() -> (serde_json::Value, Vec<String>) {
    use vecbuild::backend::cuda;
    let libs = cuda::libraries();
    let mut lines = vec![format!(
        "cuda libraries  driver {}, nvrtc {}, cublas {}",
        found(libs.driver),
        found(libs.nvrtc),
        found(libs.cublas)
    )];
    lines.push(match cuda::kernel_cache::dir() {
        Some(d) => format!("kernel cache    {} (PTX kept between runs)", d.display()),
        None => "kernel cache    off (VECBUILD_KERNEL_CACHE is empty, or no HOME)".into(),
    });
    let devices = match cuda::devices() {
        Ok(d) => d,
        Err(e) => {
            lines.push(format!("backend cuda    unavailable: {e}"));
            return (
                serde_json::json!({ "libraries": libs, "error": e.to_string() }),
                lines,
            );
        }
    };
    if devices.is_empty() {
        lines.push("backend cuda    the driver sees no GPU".into());
    }
    let mut json_devices = Vec::new();
    for d in &devices {
        // Opening the backend compiles and loads our kernels: the proof that --gpu works.
        let kernels = match cuda::CudaBackend::open(d.ordinal, cuda::Precision::Fp32) {
            Ok(b) => format!(
                "loaded ({} of {} files' PTX from the cache, the rest compiled by NVRTC)",
                b.kernels_from_cache(),
                cuda::KERNELS.len()
            ),
            Err(e) => format!("FAILED: {e}"),
        };
        lines.push(format!(
            "gpu {}           {}, compute capability {}.{}, {:.1} GiB ({:.1} GiB free); kernels {}",
            d.ordinal,
            d.name,
            d.compute_capability.0,
            d.compute_capability.1,
            d.total_bytes as f64 / (1u64 << 30) as f64,
            d.free_bytes as f64 / (1u64 << 30) as f64,
            kernels
        ));
        json_devices.push(serde_json::json!({ "device": d, "kernels": kernels }));
    }
    (
        serde_json::json!({ "libraries": libs, "devices": json_devices }),
        lines,
    )
}

#[cfg(feature = "cuda")]
fn found(yes: bool) -> &'static str {
    if yes {
        "found"
    } else {
        "not found"
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda_report() -> (serde_json::Value, Vec<String>) {
    let why = "this vecbuild was built without the `cuda` feature";
    (
        serde_json::json!(why),
        vec![format!("backend cuda    {why}")],
    )
}
