//! Fuzz target: the config parser (`Config::from_toml`, what `shardmq check-config` and
//! `--config` run: TOML, then `Config::validate`).
//!
//! Bit 0 of the first input byte picks the mode. Clear: the rest of the input is the config
//! text (lossily made UTF-8). Set: a real config (the embedded default, the Docker image's,
//! or an empty one, by bits 1–2) gets `key = value` lines spliced in, three bytes each: a key
//! known to the config (or an unknown one), a value of some shape (right or wrong type, huge
//! or negative numbers, bad addresses and core lists, strings with escapes, arrays, inline
//! tables, raw input bytes) and a place (its own section, the top level, another section).
//!
//! Never a panic; an error is one line (no line break inside) naming the file; and a config
//! that parses prints with `Config::to_toml` to text that parses back to the same `Config`
//! and prints the same again.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use shardmq::config::{Config, DEFAULT_TOML};

const DOCKER_TOML: &str = include_str!("../../packaging/docker.toml");

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let text = if sel & 1 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        spliced(sel, rest)
    };
    check(&text);
});

fn check(text: &str) {
    match Config::from_toml(text, "fuzz.toml") {
        Err(e) => {
            assert!(
                !e.0.contains(['\n', '\r']),
                "an error of more than one line: {:?}",
                e.0
            );
            assert!(
                e.0.starts_with("fuzz.toml"),
                "an error without the file: {e}"
            );
        }
        Ok(config) => {
            let printed = config
                .to_toml()
                .unwrap_or_else(|e| panic!("a parsed config does not print: {e}"));
            let again = Config::from_toml(&printed, "printed.toml")
                .unwrap_or_else(|e| panic!("printed settings do not parse: {e}\n{printed}"));
            assert_eq!(
                again, config,
                "printed settings parse to another config\n{printed}"
            );
            assert_eq!(
                again.to_toml().expect("printed once"),
                printed,
                "printed twice differently"
            );
        }
    }
}

/// Every key the config prints, with its section ("" for the top level).
fn keys() -> &'static [(String, String)] {
    static KEYS: OnceLock<Vec<(String, String)>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let printed = Config::default().to_toml().expect("the default prints");
        let mut section = String::new();
        let mut keys = Vec::new();
        for line in printed.lines() {
            let line = line.trim();
            if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = s.to_string();
            } else if let Some((k, _)) = line.split_once('=') {
                keys.push((section.clone(), k.trim().to_string()));
            }
        }
        // Options unset by default are not printed.
        for (s, k) in [
            ("", "cores"),
            ("tls", "cert_file"),
            ("tls", "key_file"),
            ("tls", "ca_file"),
            ("auth", "password_file"),
            ("auth", "allow_anonymous"),
            ("auth", "acl_file"),
            ("auth", "scram_credentials"),
            ("", "lisen"),
            ("limits", "max_infligt"),
            ("nosuch", "key"),
        ] {
            keys.push((s.to_string(), k.to_string()));
        }
        keys
    })
}

const SECTIONS: [&str; 10] = [
    "",
    "mqtt",
    "auth",
    "persistence",
    "limits",
    "tls",
    "websocket",
    "metrics",
    "cluster",
    "x",
];

/// Values of every shape a key may meet.
const VALUES: [&str; 40] = [
    "0",
    "1",
    "2",
    "7",
    "128",
    "65535",
    "65536",
    "4294967295",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "-1",
    "1.5",
    "nan",
    "inf",
    "1e400",
    "true",
    "false",
    "\"\"",
    "\"auto\"",
    "\"uring\"",
    "\"json\"",
    "\"sync\"",
    "\"0-3,8\"",
    "\"3-1\"",
    "\"1,1\"",
    "\"0\\n1\"",
    "\"0-99999\"",
    "\"/mqtt\"",
    "\"mqtt path\"",
    "[\"0.0.0.0:1883\"]",
    "[\"[::1]:1884\", \"127.0.0.1:0\"]",
    "[\"localhost:1883\"]",
    "[\"0.0.0.0:99999\"]",
    "[]",
    "\"0.0.0.0:1883\"",
    "\"redis://127.0.0.1:6379\"",
    "\"\\uD800\"",
    "\"\\u{0}\\t\\u0007\"",
    "{ a = 1 }",
];

/// A base config with `key = value` lines spliced in.
fn spliced(sel: u8, rest: &[u8]) -> String {
    let base = match (sel >> 1) & 3 {
        0 => DEFAULT_TOML,
        1 => DOCKER_TOML,
        2 => "",
        _ => "listen = [\"127.0.0.1:1883\"]\n[limits]\nmax_inflight = 4\n",
    };
    let keys = keys();
    let mut added: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut i = 0;
    while i + 3 <= rest.len() {
        let (k, v, place) = (rest[i], rest[i + 1], rest[i + 2]);
        i += 3;
        let (section, key) = &keys[usize::from(k) % keys.len()];
        let value = if usize::from(v) < VALUES.len() {
            VALUES[usize::from(v)].to_string()
        } else if v & 0x80 != 0 {
            // Raw input bytes, up to the next newline or 16 bytes.
            let n = rest[i..]
                .iter()
                .take(16)
                .position(|&b| b == b'\n')
                .unwrap_or(rest.len().saturating_sub(i).min(16));
            let raw = String::from_utf8_lossy(&rest[i..i + n]).into_owned();
            i += n;
            raw
        } else {
            u64::from(v).pow(3).to_string()
        };
        let section = match place & 3 {
            0 | 1 => section.as_str(),
            2 => "",
            _ => SECTIONS[usize::from(place >> 2) % SECTIONS.len()],
        };
        // Bit 2 of the place quotes the key (the same key, another spelling).
        let key = if place & 4 != 0 && place & 3 != 3 {
            format!("\"{key}\"")
        } else {
            key.clone()
        };
        added
            .entry(section)
            .or_default()
            .push(format!("{key} = {value}"));
    }
    // Top-level lines go first; section lines right under the section's header, or under a
    // new header at the end.
    let mut out = String::new();
    for line in added.remove("").unwrap_or_default() {
        out.push_str(&line);
        out.push('\n');
    }
    for line in base.lines() {
        out.push_str(line);
        out.push('\n');
        let header = line.trim();
        if let Some(s) = header.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            for l in added.remove(s).unwrap_or_default() {
                out.push_str(&l);
                out.push('\n');
            }
        }
    }
    for (section, lines) in added {
        out.push_str(&format!("[{section}]\n"));
        for l in lines {
            out.push_str(&l);
            out.push('\n');
        }
    }
    out
}
