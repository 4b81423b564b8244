//! Builds the built-in auth modules (`modules/*`) for `wasm32-wasip2` and embeds them
//! into the `outpost` binary, so `cargo build` alone gives a working proxy.
//!
//! The modules are built by a nested `cargo build` with its own target directory
//! (`<target>/wasm`), as wasmtime builds its guest test programs: the outer build's
//! lock is never contended and the wasm artefacts are reused between host builds.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    if let Err(e) = run() {
        println!("cargo::error={e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let root = manifest
        .parent()
        .ok_or("host/ has no parent")?
        .to_path_buf();
    let out = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
    // OUT_DIR = <target>/<profile>/build/outpost-<hash>/out
    let target = out
        .ancestors()
        .nth(4)
        .ok_or("unexpected OUT_DIR layout")?
        .to_path_buf();
    let wasm_target_dir = target.join("wasm");

    for dir in ["modules", "plugins-sdk", "wit"] {
        println!("cargo::rerun-if-changed={}", root.join(dir).display());
    }
    println!(
        "cargo::rerun-if-changed={}",
        root.join("Cargo.toml").display()
    );
    println!("cargo::rerun-if-env-changed=OUTPOST_SKIP_MODULE_BUILD");

    ensure_wasm_target();
    let modules = module_dirs(&root.join("modules"))?;
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&wasm_target_dir);
    for name in &modules {
        cmd.args(["-p", &package_name(name)]);
    }
    // Flags meant for the host build must not leak into the guest build.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run cargo for the wasm modules: {e}"))?;
    if !status.success() {
        return Err(format!(
            "building the built-in auth modules for wasm32-wasip2 failed ({status}). \
             Is the target installed? Run `rustup target add wasm32-wasip2`."
        ));
    }

    let built = wasm_target_dir.join("wasm32-wasip2").join("release");
    let mut table = String::from("/// Built-in auth modules: (name, component bytes).\n");
    table.push_str("pub const BUILTIN_MODULES: &[(&str, &[u8])] = &[\n");
    for name in &modules {
        let src = built.join(format!("{name}.wasm"));
        let dst = out.join(format!("{name}.wasm"));
        fs::copy(&src, &dst).map_err(|e| format!("copy {}: {e}", src.display()))?;
        writeln!(
            table,
            "    ({name:?}, include_bytes!({:?})),",
            dst.display().to_string()
        )
        .map_err(|e| e.to_string())?;
    }
    table.push_str("];\n");
    fs::write(out.join("builtin_modules.rs"), table).map_err(|e| e.to_string())?;
    Ok(())
}

/// On a fresh machine the `wasm32-wasip2` standard library is missing; install it with
/// rustup (when rustup manages this toolchain) so `cargo build` just works.
fn ensure_wasm_target() {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let libdir = Command::new(&rustc)
        .args(["--print", "target-libdir", "--target", "wasm32-wasip2"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if libdir.is_some_and(|d| d.is_dir()) {
        return;
    }
    println!(
        "cargo::warning=installing the wasm32-wasip2 target with rustup (needed for the auth modules)"
    );
    let ok = Command::new("rustup")
        .args(["target", "add", "wasm32-wasip2"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        println!(
            "cargo::warning=could not run `rustup target add wasm32-wasip2`; install the target yourself"
        );
    }
}

/// Every `modules/<name>/Cargo.toml`; the directory name is the module name.
fn module_dirs(dir: &Path) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let entry = entry.map_err(|e| e.to_string())?;
        if entry.path().join("Cargo.toml").is_file() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// `modules/bearer_static` is the package `outpost-module-bearer-static`.
fn package_name(module: &str) -> String {
    format!("outpost-module-{}", module.replace('_', "-"))
}
