//! Embedding shardmq with hooks of your own: a custom authentication (here: a user's
//! password is its name reversed; `banned` is banned), an authorization rule (nobody
//! publishes under `admin/`), and a log line per connect and disconnect.
//!
//! ```sh
//! cargo run --release --example custom_auth -- 127.0.0.1:1884
//! mosquitto_pub -p 1884 -u alice -P ecila -t hello -m world     # accepted
//! mosquitto_pub -p 1884 -u alice -P wrong -t hello -m world     # refused: not authorised
//! mosquitto_pub -p 1884 -u alice -P ecila -t admin/x -m no      # PUBLISH not routed
//! ```

use std::sync::Arc;

use shardmq::auth::{AuthDecision, Authenticators, ClientInfo, Hooks};
use shardmq::config::{Config, DEFAULT_TOML};
use shardmq::protocol::ReasonCode;

struct ReversedNames;

impl Hooks for ReversedNames {
    /// Runs on the authentication thread: it could ask a database here.
    fn authenticate(&self, client: &ClientInfo, password: Option<&[u8]>) -> AuthDecision {
        let Some(user) = &client.username else {
            return AuthDecision::Deny(ReasonCode::NOT_AUTHORIZED);
        };
        if user == "banned" {
            return AuthDecision::Deny(ReasonCode::BANNED);
        }
        let reversed: String = user.chars().rev().collect();
        if password == Some(reversed.as_bytes()) {
            AuthDecision::Allow
        } else {
            AuthDecision::Deny(ReasonCode::BAD_USER_NAME_OR_PASSWORD)
        }
    }

    /// Runs on the shard thread of the connection: keep it quick.
    fn authorize_publish(&self, _client: &ClientInfo, topic: &str) -> bool {
        !topic.starts_with("admin/")
    }

    fn on_connect(&self, client: &ClientInfo) {
        println!("connected: {} ({:?})", client.client_id, client.username);
    }

    fn on_disconnect(&self, client: &ClientInfo, why: &str) {
        println!("disconnected: {} ({why})", client.client_id);
    }
}

fn main() {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:1884".into());
    let mut config = Config::from_toml(DEFAULT_TOML, "built-in defaults").expect("defaults");
    config.listen = vec![listen.parse().expect("an address such as 127.0.0.1:1884")];
    config.persistence.enabled = false;
    config.pin = false;
    let hooks: Arc<dyn Hooks> = Arc::new(ReversedNames);
    let mut broker =
        shardmq::shard::run::start_with_hooks(config, Arc::new(Authenticators::new()), Some(hooks))
            .unwrap_or_else(|e| {
                eprintln!("custom_auth: {e}");
                std::process::exit(1)
            });
    println!("listening on {:?}", broker.addrs);
    // The shards run until the process is stopped.
    for t in std::mem::take(&mut broker.threads) {
        let _ = t.join();
    }
}
