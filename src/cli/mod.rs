//! Command-line definitions ("what the user typed") and dispatch to the commands.

/// `println!` for command output: a closed stdout (piped into `head`) ends the process quietly
/// with success instead of panicking; other write errors are returned.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            return Err(e.into());
        }
    }};
}

mod bench;
mod build;
mod doctor;
mod eval;
mod export;
mod generate;
mod info;
mod input;
mod knn;
mod search;
mod tune;

use std::sync::{Mutex, OnceLock};

use clap::{Parser, Subcommand};
use vecbuild::backend::Backend;

/// Build approximate-nearest-neighbour indexes from embeddings in Parquet, serve them from a
/// memory-mapped artifact, and run batch query jobs.
#[derive(Debug, Parser)]
#[command(name = "vecbuild", version, about, long_about = None, propagate_version = true)]
pub struct Args {
    /// Worker threads for reading and search (default: all cores).
    #[arg(long, global = true, value_name = "N")]
    pub threads: Option<usize>,

    /// No progress bars or summaries on stderr (errors are still printed).
    #[arg(long, short, global = true)]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Build(build::BuildArgs),
    Search(search::SearchArgs),
    Knn(knn::KnnArgs),
    Eval(eval::EvalArgs),
    Info(info::InfoArgs),
    Validate(input::ValidateArgs),
    Doctor(doctor::DoctorArgs),
    Generate(generate::GenerateArgs),
    Export(export::ExportArgs),
    Tune(tune::TuneArgs),
    BenchKnn(bench::BenchKnnArgs),
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(n) = args.threads {
        if n == 0 {
            return Err(vecbuild::Error::param("--threads must be at least 1").into());
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()?;
    }
    let ui = Ui { quiet: args.quiet };
    match args.command {
        Command::Build(a) => build::run(a, &ui),
        Command::Search(a) => search::run(a, &ui),
        Command::Knn(a) => knn::run(a, &ui),
        Command::Eval(a) => eval::run(a),
        Command::Info(a) => info::run(a),
        Command::Validate(a) => input::validate(a, &ui),
        Command::Doctor(a) => doctor::run(a),
        Command::BenchKnn(a) => bench::run(a),
        Command::Generate(a) => generate::run(a, &ui),
        Command::Export(a) => export::run(a, &ui),
        Command::Tune(a) => tune::run(a, &ui),
    }
}

/// What the commands need to know about the terminal.
pub struct Ui {
    pub quiet: bool,
}

impl Ui {
    /// A progress bar for reading rows, shown only on a terminal and without `--quiet`; its
    /// length is set once the reader knows the total.
    pub fn progress(&self, what: &str) -> indicatif::ProgressBar {
        use std::io::IsTerminal;
        if self.quiet || !std::io::stderr().is_terminal() {
            return indicatif::ProgressBar::hidden();
        }
        let bar = indicatif::ProgressBar::new(0);
        let style = indicatif::ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} rows {msg} ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_prefix(what.to_string());
        bar
    }

    /// A one-line summary on stderr, unless `--quiet`.
    pub fn note(&self, line: impl AsRef<str>) {
        if !self.quiet {
            eprintln!("{}", line.as_ref());
        }
    }
}

/// Where a command computes: `--gpu N` (and its precision), else the CPU.
#[derive(Debug, Clone, clap::Args)]
pub struct GpuArgs {
    /// Compute on this GPU (CUDA device number; `vecbuild doctor` lists them). Without it,
    /// the CPU.
    #[arg(long, value_name = "N")]
    pub gpu: Option<u32>,

    /// Matrix arithmetic on the GPU: `fp32` (default; the CPU's results), `tf32` (tensor
    /// cores: faster, near-ties may resolve differently) or `fp16` (tensor cores on fp16
    /// inputs, fp32 sums: fastest, lower recall; values must lie within ±65504).
    /// scripts/gpu-check.sh measures the recall of both.
    #[arg(long, value_name = "P", default_value = "fp32")]
    pub gpu_precision: String,
}

/// Notes, for the run's summary, each stage the GPU backend ran the slower way and why.
pub fn note_slower_paths(ui: &Ui, backend: &dyn Backend) {
    for what in backend.slower_paths() {
        ui.note(format!("note: {what}"));
    }
}

/// The compute backend for `--gpu`: the CPU without it, else that GPU or a clear error (exit
/// 2) — never a silent CPU fallback.
pub fn open_backend(args: &GpuArgs) -> anyhow::Result<Box<dyn Backend + Send>> {
    Opening::start(args)?.finish()
}

type Opened = vecbuild::Result<Box<dyn Backend + Send>>;

/// The compute backend for `--gpu`, opened on a thread of its own while the command reads its
/// input. What can make `--gpu N` fail at once (no driver, no such device, a bad precision) is
/// refused by [`Opening::start`], before anything is read; the slow rest (context, cuBLAS,
/// kernels: about 0.3 s on an H100 host) overlaps the read, and [`Opening::wait`] takes it.
pub struct Opening {
    thread: Mutex<Option<std::thread::JoinHandle<Opened>>>,
    backend: OnceLock<Box<dyn Backend + Send>>,
}

impl Opening {
    pub fn start(args: &GpuArgs) -> anyhow::Result<Self> {
        let opening = |thread, backend: Option<Box<dyn Backend + Send>>| Opening {
            thread: Mutex::new(thread),
            backend: backend.map(OnceLock::from).unwrap_or_default(),
        };
        match args.gpu {
            None if args.gpu_precision != "fp32" => Err(vecbuild::Error::param(
                "--gpu-precision needs --gpu N (the CPU computes in fp32)",
            )
            .into()),
            None => Ok(opening(None, Some(Box::new(vecbuild::backend::CpuBackend)))),
            #[cfg(feature = "cuda")]
            Some(n) => {
                use vecbuild::backend::cuda::CudaBackend;
                let precision = args.gpu_precision.parse()?;
                CudaBackend::check(n as usize)?;
                let thread = std::thread::Builder::new()
                    .name("gpu-open".into())
                    .spawn(move || -> Opened {
                        Ok(Box::new(CudaBackend::open(n as usize, precision)?))
                    })?;
                Ok(opening(Some(thread), None))
            }
            #[cfg(not(feature = "cuda"))]
            Some(n) => Err(vecbuild::Error::Gpu(format!(
                "--gpu {n}: this vecbuild was built without the `cuda` feature; run without --gpu to use the CPU"
            ))
            .into()),
        }
    }

    /// The backend, waiting for it to open the first time.
    pub fn wait(&self) -> anyhow::Result<&(dyn Backend + Send)> {
        if let Some(b) = self.backend.get() {
            return Ok(&**b);
        }
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        let opened = match thread {
            Some(t) => t
                .join()
                .map_err(|_| vecbuild::Error::Gpu("opening the GPU panicked".into()))??,
            None => return Err(vecbuild::Error::Gpu("the GPU failed to open".into()).into()),
        };
        Ok(&**self.backend.get_or_init(|| opened))
    }

    /// The backend itself, once open.
    pub fn finish(mut self) -> anyhow::Result<Box<dyn Backend + Send>> {
        self.wait()?;
        self.backend
            .take()
            .ok_or_else(|| vecbuild::Error::Gpu("the GPU failed to open".into()).into())
    }
}

impl Drop for Opening {
    /// A command that fails while the device is still opening (bad input, say) waits for it,
    /// so the process never exits with the driver half-way through creating a context.
    fn drop(&mut self) {
        if let Some(t) = self.thread.get_mut().ok().and_then(|t| t.take()) {
            let _ = t.join();
        }
    }
}
