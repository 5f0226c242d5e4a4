//! Command-line flags and subcommands, and how they override the config file.
//!
//! Runs on the main thread before any shard starts. Usage errors exit with status 2 and one
//! line (clap's own message), as do configuration errors (see [`crate::config`]).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError, DEFAULT_TOML, IoDriver, parse_cores};

/// shardmq: a thread-per-core MQTT 3.1 / 3.1.1 / 5.0 broker.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// TOML config file; without it the built-in defaults apply (see --print-config).
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,

    /// Address to accept MQTT over TCP on; repeat for several. Replaces the file's `listen`.
    #[arg(long, value_name = "ADDR")]
    pub listen: Vec<SocketAddr>,

    /// Address to accept MQTT over WebSocket on (path websocket.path, /mqtt by default);
    /// repeat for several. Replaces the file's `websocket.listen`.
    #[arg(long, value_name = "ADDR")]
    pub ws_listen: Vec<SocketAddr>,

    /// Address to serve Prometheus /metrics and /health on (HTTP); repeat for several.
    /// Replaces the file's `metrics.listen`.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Vec<SocketAddr>,

    /// Join a cluster through this Redis, e.g. redis://127.0.0.1:6379, or through a Redis
    /// Cluster, e.g. redis+cluster://10.0.0.1:6379,10.0.0.2:6379 (cluster.redis).
    #[arg(long, value_name = "URL")]
    pub cluster: Option<String>,

    /// Log line format (log_format).
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<crate::config::LogFormat>,

    /// Number of shards (threads), one per core by default.
    #[arg(long, value_name = "N", conflicts_with = "cores")]
    pub shards: Option<usize>,

    /// Cores to run shards on, one shard per core, e.g. 0-3,8.
    #[arg(long, value_name = "LIST", value_parser = parse_core_list)]
    pub cores: Option<String>,

    /// Do not pin shard threads to cores.
    #[arg(long)]
    pub no_pin: bool,

    /// Keep nothing on disk: a pure in-memory broker (persistence.enabled = false).
    #[arg(long)]
    pub no_persistence: bool,

    /// Directory of the embedded store (persistence.data_dir).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// When a QoS 1/2 PUBLISH to a persistent session is acknowledged: sync = once its
    /// writes are fsynced; relaxed = at once, fsynced every commit_interval_ms
    /// (persistence.durability).
    #[arg(long, value_enum, value_name = "MODE")]
    pub durability: Option<crate::config::Durability>,

    /// I/O driver: auto tries io_uring and falls back to epoll.
    #[arg(long, value_enum, value_name = "DRIVER")]
    pub io_driver: Option<IoDriver>,

    /// Log filter: error, warn, info, debug, trace, or e.g. shardmq=debug.
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,

    /// Print the annotated default configuration and exit.
    #[arg(long)]
    pub print_config: bool,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a config file and print the effective settings.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Load-test a broker (this one or any other): fanin, fanout, pairs, shared or conn.
    Bench(Box<crate::bench::BenchArgs>),
    /// Add, update (or with -D delete) a user in a password file in mosquitto's format
    /// (auth.password_file; files made by mosquitto_passwd work too). The password is asked
    /// twice on the terminal without echo, or read from the first line of standard input.
    Passwd {
        /// Create the file (replacing an existing one).
        #[arg(short = 'c', conflicts_with = "delete")]
        create: bool,
        /// Delete the user instead.
        #[arg(short = 'D')]
        delete: bool,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
        /// The password file.
        file: PathBuf,
        /// The user name.
        user: String,
    },
    /// Print a SCRAM-SHA-256 credential line for `auth.scram_credentials` (MQTT 5.0 enhanced
    /// authentication); the password is read from the first line of standard input.
    ScramCredential {
        /// The user name.
        user: String,
        /// PBKDF2 iterations (RFC 7677 asks for at least 4096).
        #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(4096..))]
        iterations: u32,
    },
}

fn parse_core_list(s: &str) -> Result<String, String> {
    parse_cores(s).map(|_| s.to_string())
}

impl Cli {
    /// The configuration: the file (or defaults), then the flags on top.
    pub fn effective_config(&self) -> Result<Config, ConfigError> {
        let mut config = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::from_toml(DEFAULT_TOML, "built-in defaults")?,
        };
        if !self.listen.is_empty() {
            config.listen = self.listen.clone();
        }
        if !self.metrics_listen.is_empty() {
            config.metrics.listen = self.metrics_listen.clone();
        }
        if let Some(url) = &self.cluster {
            config.cluster.redis = url.clone();
        }
        if let Some(f) = self.log_format {
            config.log_format = f;
        }
        if !self.ws_listen.is_empty() {
            config.websocket.listen = self.ws_listen.clone();
        }
        if let Some(n) = self.shards {
            if n == 0 {
                return Err(ConfigError("--shards: must be at least 1".into()));
            }
            config.shards = n;
            config.cores = None;
        }
        if let Some(c) = &self.cores {
            config.cores = Some(c.clone());
        }
        if self.no_pin {
            config.pin = false;
        }
        if self.no_persistence {
            config.persistence.enabled = false;
        }
        if let Some(d) = &self.data_dir {
            config.persistence.data_dir = d.clone();
        }
        if let Some(d) = self.durability {
            config.persistence.durability = d;
        }
        if let Some(d) = self.io_driver {
            config.io_driver = d;
        }
        if let Some(l) = &self.log_level {
            config.log_level = l.clone();
        }
        Ok(config)
    }
}

/// `shardmq passwd`: adds, updates or deletes `user` in the password `file`, with the
/// password from `password` (asked for by the caller). Returns what was done, for the user.
pub fn passwd(
    file: &std::path::Path,
    user: &str,
    create: bool,
    delete: bool,
    password: Option<&str>,
) -> Result<String, String> {
    use crate::auth::password::{DEFAULT_ITERATIONS, PasswordFile, PasswordHash};
    let shown = file.display();
    let mut users = if create {
        PasswordFile::default()
    } else {
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("passwd: cannot read {shown}: {e} (use -c to create it)"))?;
        PasswordFile::parse(&text).map_err(|e| format!("passwd: {shown}: {e}"))?
    };
    let done = if delete {
        if !users.remove(user) {
            return Err(format!("passwd: {shown} has no user {user:?}"));
        }
        format!("deleted {user} from {shown}")
    } else {
        let password = password.unwrap_or_default();
        if password.is_empty() {
            return Err("passwd: the password is empty".into());
        }
        let hash =
            PasswordHash::new(password, DEFAULT_ITERATIONS).map_err(|e| format!("passwd: {e}"))?;
        let updated = users.get(user).is_some();
        users.set(user, hash).map_err(|e| format!("passwd: {e}"))?;
        format!(
            "{} {user} in {shown}",
            if updated { "updated" } else { "added" }
        )
    };
    // Written next to the file and renamed over it, readable by its owner only: a crash
    // never leaves half a file.
    let tmp = file.with_extension("tmp-shardmq");
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| format!("passwd: cannot write {}: {e}", tmp.display()))?;
        f.write_all(users.encode().as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| format!("passwd: cannot write {}: {e}", tmp.display()))?;
    }
    std::fs::rename(&tmp, file).map_err(|e| format!("passwd: cannot replace {shown}: {e}"))?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("shardmq").chain(args.iter().copied()))
    }

    #[test]
    fn flags_override_defaults() {
        let c = cli(&[
            "--listen",
            "127.0.0.1:1999",
            "--shards",
            "3",
            "--no-pin",
            "--io-driver",
            "epoll",
        ])
        .unwrap()
        .effective_config()
        .unwrap();
        assert_eq!(c.listen, vec!["127.0.0.1:1999".parse().unwrap()]);
        assert_eq!((c.shards, c.pin, c.io_driver), (3, false, IoDriver::Epoll));
    }

    #[test]
    fn bad_flags_are_usage_errors() {
        for args in [
            &["--shards", "x"][..],
            &["--cores", "3-1"],
            &["--io-driver", "kqueue"],
            &["--listen", "nope"],
            &["--shards", "2", "--cores", "0-1"],
            &["--bogus"],
        ] {
            let e = cli(args).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{args:?}");
        }
        assert!(cli(&["--shards", "0"]).unwrap().effective_config().is_err());
    }
}
