//! The on-disk cache of compiled modules, so a restart does not recompile.
//!
//! Entries are named `<sha256 of the component>-<hash of the engine's configuration
//! and version>.cwasm`, written atomically (temporary file + rename) into a directory
//! created with mode 0700. Any failure to read or write the cache only costs a
//! recompilation; it never fails a load.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::PathBuf;

use wasmtime::Engine;
use wasmtime::component::Component;

/// The cache directory and this engine's fingerprint.
#[derive(Debug)]
pub struct CompileCache {
    dir: PathBuf,
    engine_tag: String,
}

impl CompileCache {
    /// A cache in `dir` for artefacts of `engine`.
    pub fn new(dir: PathBuf, engine: &Engine, memory_bytes: usize) -> Self {
        let mut h = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        // The memory cap shapes the pooling allocator's memory layout, which compiled
        // code depends on; an artefact compiled under another cap is unusable.
        memory_bytes.hash(&mut h);
        env!("CARGO_PKG_VERSION").hash(&mut h);
        Self {
            dir,
            engine_tag: format!("{:016x}", h.finish()),
        }
    }

    fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}-{}.cwasm", self.engine_tag))
    }

    /// The cached compilation of the component whose SHA-256 is `digest`, if any.
    pub fn load(&self, engine: &Engine, digest: &str) -> Option<Component> {
        let path = self.path(digest);
        if !path.is_file() {
            return None;
        }
        match deserialize(engine, &path) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), "ignoring unusable compile-cache entry: {e:#}");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Save `component` (compiled from bytes with SHA-256 `digest`).
    pub fn store(&self, component: &Component, digest: &str) {
        if let Err(e) = self.try_store(component, digest) {
            tracing::warn!(dir = %self.dir.display(), "cannot write the compile cache: {e:#}");
        }
    }

    fn try_store(
        &self,
        component: &Component,
        digest: &str,
    ) -> Result<(), Box<dyn std::error::Error>> {
        create_private_dir(&self.dir)?;
        let bytes = component.serialize()?;
        let mut tmp = tempfile_in(&self.dir)?;
        tmp.1.write_all(&bytes)?;
        tmp.1.sync_all()?;
        std::fs::rename(&tmp.0, self.path(digest))?;
        Ok(())
    }
}

fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
}

fn tempfile_in(dir: &std::path::Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    let name = format!(".tmp-{}-{:x}", std::process::id(), rand_suffix());
    let path = dir.join(name);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)?;
    Ok((path, file))
}

fn rand_suffix() -> u64 {
    let mut h = DefaultHasher::new();
    std::time::SystemTime::now().hash(&mut h);
    std::thread::current().id().hash(&mut h);
    h.finish()
}

/// Load a precompiled component.
// SAFETY: `unsafe` is necessary: wasmtime has no safe API to load precompiled machine
// code (its own `cache` feature makes this same call internally). The contract is that
// the file holds the output of `Component::serialize` for a compatible engine:
// - we only read files we wrote, from a directory we created with mode 0700, named by the
//   SHA-256 of the component and a fingerprint of this engine's configuration and version;
// - files are written to a temporary name and renamed into place, so a reader never sees
//   a partial file;
// - wasmtime itself checks the header (version, target, flags) and rejects mismatches,
//   in which case the entry is deleted and the component recompiled.
// Whoever can write that directory can already replace the `outpost` binary's inputs.
#[allow(unsafe_code)]
fn deserialize(engine: &Engine, path: &std::path::Path) -> wasmtime::Result<Component> {
    unsafe { Component::deserialize_file(engine, path) }
}
