//! The `shardmq` binary: parse flags, load the config, run.

use clap::Parser;
use shardmq::cli::{Cli, Command};
use shardmq::config::{Config, DEFAULT_TOML};

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
        None => {
            let config = cli.effective_config().unwrap_or_else(|e| fail(&e));
            eprintln!(
                "shardmq {}: the broker runtime is not built yet (codec only); config is valid: {} listener(s), {} shard(s)",
                env!("CARGO_PKG_VERSION"),
                config.listen.len(),
                config
                    .shard_cores(std::thread::available_parallelism().map_or(1, |n| n.get()))
                    .len()
            );
            std::process::exit(1);
        }
    }
}

/// Prints one error line and exits with status 2.
fn fail(e: &dyn std::fmt::Display) -> ! {
    eprintln!("shardmq: {e}");
    std::process::exit(2);
}
