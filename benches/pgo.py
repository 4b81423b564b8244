#!/usr/bin/env python3
"""Build a profile-guided (PGO) release binary of Outpost: target/pgo/outpost.

    benches/pgo.py                      # instrumented build, training run, optimised build
    benches/load.py --skip-build --outpost-bin target/pgo/outpost   # then measure it

Three steps, each printed as it starts:

1. build `outpost` with `-Cprofile-generate` (target dir `target/pgo/gen`);
2. train: start the load benchmark's upstream (nginx) and Redis, run the benchmark's Outpost
   scenarios through the instrumented binary with wrk (`none`, `bearer_static`,
   `hmac_signed`, `oauth2_client_credentials`, the 50-rule allowlist, the rate limiter on
   the embedded store and on Redis, the 10 MB response, a paced run), stop it with SIGTERM
   so that it writes its profile, and merge the profile with `llvm-profdata`;
3. build `outpost` again with `-Cprofile-use` (target dir `target/pgo/use`) and copy it to
   `target/pgo/outpost`.

The code is the same as `cargo build --release` builds; only the compiler's choices (code
layout, inlining, branch order) follow the profile. Needs wrk, nginx and redis-server (as
`benches/load.py` does) and an `llvm-profdata` of the same LLVM major version as `rustc`
(`rustc -vV`): `rustup component add llvm-tools`, or Debian's `llvm-<major>` package.
Each build is a full release build (fat LTO): about ten minutes on two cores.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import load  # noqa: E402

ROOT = load.ROOT
PGO = ROOT / "target" / "pgo"


def rustc_facts():
    out = subprocess.run(["rustc", "-vV"], capture_output=True, text=True, check=True).stdout
    host = re.search(r"^host: (\S+)", out, re.M)
    llvm = re.search(r"^LLVM version: (\d+)", out, re.M)
    if not host or not llvm:
        raise SystemExit(f"cannot read the host triple and LLVM version from `rustc -vV`:\n{out}")
    return host.group(1), int(llvm.group(1))


def find_profdata(host, major):
    """An llvm-profdata whose LLVM major version is rustc's: profiles are not portable
    across major versions."""
    sysroot = subprocess.run(["rustc", "--print", "sysroot"], capture_output=True, text=True,
                             check=True).stdout.strip()
    candidates = [Path(sysroot) / "lib" / "rustlib" / host / "bin" / "llvm-profdata",
                  Path(f"/usr/lib/llvm-{major}/bin/llvm-profdata")]
    for name in [f"llvm-profdata-{major}", "llvm-profdata"]:
        found = shutil.which(name)
        if found:
            candidates.append(Path(found))
    seen = []
    for c in candidates:
        if not c.exists():
            continue
        v = subprocess.run([str(c), "merge", "--version"], capture_output=True, text=True).stdout
        m = re.search(r"LLVM version (\d+)", v)
        seen.append(f"{c} (LLVM {m.group(1) if m else '?'})")
        if m and int(m.group(1)) == major:
            return c
    raise SystemExit(
        f"no llvm-profdata for LLVM {major} (rustc's); found: {', '.join(seen) or 'none'}. "
        f"Install one: `rustup component add llvm-tools`, or `apt-get install llvm-{major}`.")


def cargo_build(host, target_dir, rustflags):
    # RUSTFLAGS with an explicit --target reaches only the binary's own crates, not build
    # scripts; host/build.rs keeps it away from the wasm modules it builds.
    env = dict(os.environ, RUSTFLAGS=rustflags, CARGO_TARGET_DIR=str(target_dir))
    subprocess.run(["cargo", "build", "--release", "--target", host, "-p", "outpost", "--bin", "outpost"],
                   cwd=ROOT, env=env, check=True)
    return target_dir / host / "release" / "outpost"


def train(binary, seconds):
    args = argparse.Namespace(seconds=seconds, connections=64, repeat=1, nginx_workers=1,
                              upstream_workers=1, skip_build=True, quick=False)
    b = load.Bench(args)
    b.outpost_bin = binary
    try:
        b.start_backends(floor=False)
        cache = b.dir / "cache"
        cache.mkdir()
        for redis in (False, True):
            p, port, _ = b.start_outpost(cache, redis=redis, name=f"train-{'redis' if redis else 'embedded'}")
            o = f"http://127.0.0.1:{port}"
            rows = [("ratelimited", "/v1/items", 64, 0)] if redis else [
                ("none", "/v1/items", 64, 0), ("bearer", "/v1/items", 64, 0), ("bearer", "/v1/items", 8, 10),
                ("hmac", load.HMAC_PATH, 64, 0), ("oauth2", "/v1/items", 64, 0),
                ("allow50", load.ALLOW50_PATH, 64, 0), ("ratelimited", "/v1/items", 64, 0),
                ("none", "/big", 4, 0)]
            for provider, path, connections, delay in rows:
                r = b.wrk(o + path, provider, connections=connections, threads=1 if delay else 2,
                          delay_ms=delay, random_delay=bool(delay))
                errors = r["errors"] + r["status_errors"]
                print(f"  {'redis' if redis else 'embedded'} {provider} {path}: {r['requests']} requests, "
                      f"{errors} errors", flush=True)
                if errors or not r["requests"]:
                    raise SystemExit(f"training run failed for {provider} {path}; logs in {b.dir}")
            p.terminate()
            code = p.wait(60)
            if code != 0:
                raise SystemExit(f"the instrumented outpost exited with {code}; its profile may be incomplete")
    finally:
        b.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-seconds", type=int, default=4, help="seconds per training scenario (default 4)")
    a = ap.parse_args()
    for tool in ["wrk", "nginx", "redis-server"]:
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found: apt-get install wrk nginx redis-server")
    host, major = rustc_facts()
    profdata = find_profdata(host, major)
    raw = PGO / "raw"
    shutil.rmtree(raw, ignore_errors=True)
    started = time.monotonic()

    print(f"[1/3] instrumented build (target/pgo/gen); rustc's LLVM {major}, {profdata}", flush=True)
    gen = cargo_build(host, PGO / "gen", f"-Cprofile-generate={raw}")

    print(f"[2/3] training run ({a.train_seconds} s per scenario)", flush=True)
    train(gen, a.train_seconds)
    profiles = sorted(raw.glob("*.profraw"))
    if not profiles:
        raise SystemExit(f"the training run wrote no profile into {raw}")
    merged = PGO / "outpost.profdata"
    subprocess.run([str(profdata), "merge", "-o", str(merged)] + [str(x) for x in profiles], check=True)

    print("[3/3] optimised build with the profile (target/pgo/use)", flush=True)
    built = cargo_build(host, PGO / "use", f"-Cprofile-use={merged}")
    out = PGO / "outpost"
    shutil.copy2(built, out)
    print(f"done in {(time.monotonic() - started) / 60:.1f} min: {out.relative_to(ROOT)}", flush=True)


if __name__ == "__main__":
    main()
