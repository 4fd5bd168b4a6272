//! `retrybudget`: parse the command line, build the runtime, run the subcommand, map errors to exit codes
//! (0 success, 1 runtime failure, 2 bad flag, variable or config file, 3 `report` found nothing to report).

use std::process::ExitCode;

/// mimalloc, not glibc malloc: the proxy allocates per request and per attempt (bodies, spans, log records,
/// evidence lines) from two worker threads and four exporter threads; glibc's arenas and consolidation cost
/// ~13 % of its CPU under load (BENCHMARKS.md, "Where the cost is").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let (cli, matches) = retrybudget::parse();
    if let Err(e) = retrybudget::logging::init(cli.log_level.as_deref(), cli.log_format) {
        // The command's answer, not a log: printed whatever the (invalid) level says.
        eprintln!("retrybudget: error: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("retrybudget: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(retrybudget::run(cli, matches));
    // Don't wait for stray blocking tasks (e.g. a stdin reader) at exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("retrybudget: error: {e:#}");
            ExitCode::from(retrybudget::exit_code_for(&e))
        }
    }
}
