//! The `shardmq` binary: parse flags, load the config, start the shards, run.

use clap::Parser;
use shardmq::cli::{Cli, Command};
use shardmq::config::{Config, DEFAULT_TOML};

/// mimalloc, unless built with `--features system-allocator` (for heaptrack and other
/// malloc-level tools; see perf/README.md).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = Cli::parse();
    if cli.print_config {
        print!("{DEFAULT_TOML}");
        return;
    }
    match &cli.command {
        Some(Command::CheckConfig { file }) => match Config::load(file) {
            Ok(config) => {
                println!("{file}: ok", file = file.display());
                println!("{config:#?}");
            }
            Err(e) => fail(&e),
        },
        Some(Command::Bench(args)) => std::process::exit(shardmq::bench::main(args)),
        None => {
            let config = cli.effective_config().unwrap_or_else(|e| fail(&e));
            init_logging(&config.log_level);
            tracing::info!("shardmq {} starting", env!("CARGO_PKG_VERSION"));
            match shardmq::shard::run::start(config) {
                Ok(broker) => {
                    for t in broker.threads {
                        let _ = t.join();
                    }
                    // A shard thread only ends by panicking: fail loudly.
                    eprintln!("shardmq: a shard stopped unexpectedly");
                    std::process::exit(1);
                }
                Err(e) => {
                    eprintln!("shardmq: {e}");
                    std::process::exit(1);
                }
            }
        }
    }
}

/// Logs to stderr with the configured filter (`RUST_LOG` overrides it).
fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|e| fail(&format!("log_level {level:?}: {e}")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

/// Prints one error line and exits with status 2.
fn fail(e: &dyn std::fmt::Display) -> ! {
    eprintln!("shardmq: {e}");
    std::process::exit(2);
}
