//! `shardmq check-config`: the effective settings as TOML, and one-line errors with exit 2.

use std::path::PathBuf;
use std::process::{Command, Output};

/// A config file in the temp directory, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, text: &str) -> Self {
        let path = std::env::temp_dir().join(format!("shardmq-{}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn check_config(path: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shardmq"))
        .arg("check-config")
        .arg(path)
        .output()
        .unwrap()
}

#[test]
fn prints_the_effective_settings_as_toml() {
    let file = TempFile::new("good.toml", "[limits]\nmax_inflight = 7\n");
    let out = check_config(&file.0);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let (first, settings) = stdout.split_once('\n').unwrap();
    assert_eq!(first, format!("{}: ok", file.0.display()));
    let lines: Vec<&str> = settings.lines().collect();
    assert!(lines.contains(&"max_inflight = 7"), "{stdout}");
    assert!(lines.contains(&"max_packet_size = 1048576"), "{stdout}");
    assert!(lines.contains(&"[limits]"), "{stdout}");
    // The settings are TOML that says the same again.
    let again = TempFile::new("again.toml", settings);
    let out = check_config(&again.0);
    assert_eq!(out.status.code(), Some(0));
    let second = String::from_utf8(out.stdout).unwrap();
    assert_eq!(second.split_once('\n').unwrap().1, settings);
}

#[test]
fn a_bad_file_is_one_line_and_exit_2() {
    let file = TempFile::new("bad.toml", "shards = 2\n[limits]\nmax_inflitght = 1\n");
    let out = check_config(&file.0);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("line 3"), "{stderr}");
    assert!(stderr.contains("unknown field"), "{stderr}");
    assert!(stderr.contains("max_inflitght"), "{stderr}");
}

#[test]
fn the_shipped_example_is_ok() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("shardmq.toml");
    let out = check_config(&path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with(&format!("{}: ok\n", path.display())),
        "{stdout}"
    );
    assert!(
        stdout.contains("\nlisten = [\"0.0.0.0:1883\"]\n"),
        "{stdout}"
    );
}
