//! The `sluice` command as a user runs it (the end-to-end tests in `tests/` run it under
//! load; this package's test makes cargo build the binary with the workspace's tests).

use std::process::Command;

#[test]
fn check_prints_what_the_embedded_default_compiled_to() {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("check")
        .output()
        .expect("sluice runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("config: <embedded default>"), "{text}");
    assert!(text.contains("routes: 100"), "{text}");
    assert!(text.contains("dead-letter (json)"), "{text}");
}

#[test]
fn a_bad_config_is_refused_with_its_file_and_line() {
    let dir = std::env::temp_dir().join(format!("sluice-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, "[engine]\npartitions = 0\n[keys]\ndemo = true\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .expect("sluice runs");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("engine.partitions"),
        "{err}"
    );
}
