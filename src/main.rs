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
                let settings = config.to_toml().unwrap_or_else(|e| fail(&e));
                println!("{file}: ok", file = file.display());
                print!("{settings}");
            }
            Err(e) => fail(&e),
        },
        Some(Command::Bench(args)) => std::process::exit(shardmq::bench::main(args)),
        Some(Command::Passwd {
            create,
            delete,
            password_stdin,
            file,
            user,
        }) => {
            let password = if *delete {
                None
            } else if *password_stdin {
                let mut line = String::new();
                if std::io::stdin().read_line(&mut line).is_err() {
                    fail(&"passwd: cannot read the password from standard input");
                }
                Some(line.trim_end_matches(['\r', '\n']).to_string())
            } else {
                let ask = |prompt: &str| {
                    rpassword::prompt_password(prompt).unwrap_or_else(|e| {
                        fail(&format!(
                            "passwd: cannot read the password from the terminal ({e}); use --password-stdin"
                        ))
                    })
                };
                let first = ask("Password: ");
                if ask("Reenter password: ") != first {
                    fail(&"passwd: the passwords do not match");
                }
                Some(first)
            };
            match shardmq::cli::passwd(file, user, *create, *delete, password.as_deref()) {
                Ok(done) => eprintln!("{done}"),
                Err(e) => fail(&e),
            }
        }
        Some(Command::ScramCredential { user, iterations }) => {
            let mut password = String::new();
            if std::io::stdin().read_line(&mut password).is_err() {
                fail(&"scram-credential: cannot read the password from standard input");
            }
            let password = password.trim_end_matches(['\r', '\n']);
            if password.is_empty() {
                fail(
                    &"scram-credential: give the password on standard input, e.g. `echo secret | shardmq scram-credential alice`",
                );
            }
            match shardmq::auth::ScramCredential::generate(password, *iterations) {
                Ok(c) => println!("{}", shardmq::auth::scram::credential_line(user, &c)),
                Err(e) => fail(&e),
            }
        }
        None => {
            let config = cli.effective_config().unwrap_or_else(|e| fail(&e));
            init_logging(&config.log_level, config.log_format);
            tracing::info!("shardmq {} starting", env!("CARGO_PKG_VERSION"));
            // Before any shard thread exists, so every thread inherits the mask and the
            // signals wait for `sigwait` below.
            let signals = signals::block(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP]);
            match shardmq::shard::run::start(config) {
                Ok(mut broker) => {
                    let threads = std::mem::take(&mut broker.threads);
                    std::thread::spawn(move || {
                        for t in threads {
                            let _ = t.join();
                        }
                        // A shard thread only ends by panicking: fail loudly.
                        eprintln!("shardmq: a shard stopped unexpectedly");
                        std::process::exit(1);
                    });
                    let sig = loop {
                        match signals::wait(&signals) {
                            "SIGHUP" => {
                                let done = broker.reload();
                                if done.is_empty() {
                                    tracing::info!(
                                        "SIGHUP: nothing to reload (no password file, ACL file or TLS listener)"
                                    );
                                } else {
                                    tracing::info!("SIGHUP: reloaded {}", done.join(", "));
                                }
                            }
                            sig => break sig,
                        }
                    };
                    tracing::info!("signal {sig}: shutting down");
                    let open = broker.shutdown(std::time::Duration::from_secs(5));
                    if open > 0 {
                        tracing::warn!("{open} connections still open after 5 s; exiting");
                    }
                    tracing::info!("shardmq stopped");
                    std::process::exit(0);
                }
                Err(e) => {
                    eprintln!("shardmq: {e}");
                    std::process::exit(1);
                }
            }
        }
    }
}

/// SIGTERM / SIGINT handling without a handler: blocked in every thread, taken by the main
/// thread with `sigwait(3)`.
mod signals {
    /// Blocks `sigs` in the calling thread (and the threads it starts later); returns the set.
    pub fn block(sigs: &[libc::c_int]) -> libc::sigset_t {
        // SAFETY: `set` is a plain C struct that sigemptyset initialises before any other use;
        // sigaddset and pthread_sigmask only read and write that local set and this thread's
        // signal mask.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for &s in sigs {
                libc::sigaddset(&mut set, s);
            }
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            set
        }
    }

    /// Waits for one of the signals in `set` (blocked by [`block`]); returns its name.
    pub fn wait(set: &libc::sigset_t) -> &'static str {
        let mut sig: libc::c_int = 0;
        loop {
            // SAFETY: `set` was initialised by `block`, `sig` is a valid out pointer.
            let r = unsafe { libc::sigwait(set, &mut sig) };
            if r == 0 {
                return match sig {
                    libc::SIGTERM => "SIGTERM",
                    libc::SIGINT => "SIGINT",
                    libc::SIGHUP => "SIGHUP",
                    _ => "signal",
                };
            }
        }
    }
}

/// Logs to stderr with the configured filter (`RUST_LOG` overrides it).
fn init_logging(level: &str, format: shardmq::config::LogFormat) {
    // The store's own start-up chatter (fjall, lsm-tree) only at warn unless asked for.
    let level = if level.contains("fjall") || level.contains("lsm_tree") {
        level.to_string()
    } else {
        format!("{level},fjall=warn,lsm_tree=warn")
    };
    let level = level.as_str();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|e| fail(&format!("log_level {level:?}: {e}")));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        shardmq::config::LogFormat::Text => fmt
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        shardmq::config::LogFormat::Json => fmt.json().flatten_event(true).init(),
    }
}

/// Prints one error line and exits with status 2.
fn fail(e: &dyn std::fmt::Display) -> ! {
    eprintln!("shardmq: {e}");
    std::process::exit(2);
}
