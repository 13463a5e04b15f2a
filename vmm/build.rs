//! Builds `hutch-init` (the guest's PID 1) as a static binary and embeds it
//! into `hutch`, so one `hutch` file carries everything a guest needs besides
//! the kernel.
//!
//! Set `HUTCH_INIT_BIN` to use a prebuilt init instead.

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "x86_64-unknown-linux-gnu";

fn main() {
    let manifest =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest.parent().expect("workspace root").to_path_buf();
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    for p in [
        "guest/init/src",
        "guest/init/Cargo.toml",
        "guest/proto/src",
        "guest/proto/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
    println!("cargo:rerun-if-env-changed=HUTCH_INIT_BIN");
    let dest = out.join("hutch-init");

    if let Some(prebuilt) = std::env::var_os("HUTCH_INIT_BIN") {
        copy(Path::new(&prebuilt), &dest);
        return;
    }

    let target_dir = out.join("init-target");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args(["build", "--release", "-p", "hutch-init", "--target", TARGET])
        .arg("--target-dir")
        .arg(&target_dir)
        // Static and position-dependent: no dynamic loader and no start-up
        // relocations, which under an emulated CPU cost tens of milliseconds.
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "-Ctarget-feature=+crt-static\x1f-Crelocation-model=static\x1f-Cstrip=symbols",
        )
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .status()
        .expect("running cargo to build hutch-init");
    assert!(status.success(), "building hutch-init failed");
    copy(
        &target_dir.join(TARGET).join("release").join("hutch-init"),
        &dest,
    );
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copying {} to {}: {e}", from.display(), to.display()));
}
