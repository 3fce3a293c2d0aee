//! Architecture invariant: flopmeter-core never touches the outside world. Its normal
//! dependencies are limited to this allow-list; adding tokio, sled, tonic, nvml or a clock crate
//! here fails the build's tests. (`sha2` is pure computation: the audit log's hash chain;
//! `jiff` reads RFC 3339 text in `utc::parse_utc`, and `core/clippy.toml` forbids asking it,
//! or std, for the time.)

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

#[test]
fn core_depends_only_on_pure_crates() {
    const ALLOWED: &[&str] = &["serde", "sha2", "jiff", "thiserror"];
    let manifest = include_str!("../Cargo.toml");
    let mut in_deps = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if in_deps && !line.is_empty() && !line.starts_with('#') {
            let name = line.split(['=', '.', ' ']).next().unwrap();
            assert!(
                ALLOWED.contains(&name),
                "flopmeter-core must stay pure (no I/O, no clock); {name:?} is not on the allow-list"
            );
        }
    }
}
