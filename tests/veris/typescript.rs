//! The TypeScript client (`clients/typescript/`): its `node --test` suite, run against
//! this build's `veris-jobs serve`.

use std::path::Path;
use std::process::Command;

#[test]
fn the_typescript_client_passes_its_tests_against_the_real_server() {
    let package = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/typescript");
    if Command::new("npm").arg("--version").output().is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true and Node.js (npm) is missing"
        );
        crate::common::skipping(
            "the TypeScript client's tests pass without running: npm is not installed",
        );
        return;
    }
    // The compiler, pinned by the lockfile.
    if !package.join("node_modules/typescript").exists() {
        let install = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&package)
            .output()
            .expect("npm runs");
        assert!(
            install.status.success(),
            "npm ci: {}",
            String::from_utf8_lossy(&install.stderr)
        );
    }
    let test = Command::new("npm")
        .arg("test")
        .current_dir(&package)
        .env("VERIS_JOBS_BIN", env!("CARGO_BIN_EXE_veris-jobs"))
        .env_remove("VERIS_JOBS_URL")
        .env_remove("CRON_SECRET")
        .env_remove("READ_SECRET")
        .env_remove("DATABASE_URL")
        .output()
        .expect("npm runs");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
    assert!(test.status.success(), "npm test failed:\n{output}");
    assert!(output.contains("# fail 0"), "{output}");
}
