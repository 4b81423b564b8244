//! Test harness: builds fixture plugins, runs mock upstreams, starts the real `outpost`
//! binary on a free port with a configuration written to a temporary directory, and
//! captures everything it logs.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::Request;
use axum::response::Response;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Build every fixture plugin (and the SDK's Rust examples) once (a separate cargo invocation, as a plugin author
/// would) and return the path of `<name>.wasm`.
pub fn fixture(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let target = root().join("target").join("wasm");
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.current_dir(root())
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip2",
                "--target-dir",
            ])
            .arg(&target);
        // The test fixtures and the SDK's Rust example plugins.
        for dir in ["tests/fixtures", "plugins-sdk/rust"] {
            for entry in std::fs::read_dir(root().join(dir)).expect("fixtures dir") {
                let entry = entry.expect("entry");
                let pkg = entry.file_name().to_string_lossy().replace('_', "-");
                cmd.args(["-p", &pkg]);
            }
        }
        cmd.env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("RUSTFLAGS");
        let status = cmd.status().expect("run cargo for fixtures");
        assert!(status.success(), "building fixture plugins failed");
        target.join("wasm32-wasip2").join("release")
    });
    let path = dir.join(format!("{name}.wasm"));
    assert!(path.is_file(), "fixture {} missing", path.display());
    path
}

/// Build a non-Rust example plugin once with its own toolchain and return the
/// component's path. `prepare` installs the toolchain if needed (once, even when tests
/// race) and may return a directory to prepend to `PATH`.
fn build_with(
    cell: &'static OnceLock<PathBuf>,
    program: &str,
    script: &str,
    out: &str,
    prepare: impl FnOnce() -> Option<PathBuf>,
) -> PathBuf {
    cell.get_or_init(|| {
        let path = prepare();
        let dir = root().join("target").join("lang");
        std::fs::create_dir_all(&dir).expect("target/lang");
        let wasm = dir.join(out);
        let started = Instant::now();
        let mut cmd = Command::new(program);
        cmd.arg(root().join(script)).arg(&wasm);
        if let Some(bin) = path {
            let old = std::env::var_os("PATH").unwrap_or_default();
            let joined =
                std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&old)))
                    .expect("PATH");
            cmd.env("PATH", joined);
        }
        let status = cmd
            .status()
            .unwrap_or_else(|e| panic!("cannot run {program} for {script}: {e}"));
        assert!(status.success(), "{script} failed (see its output above)");
        eprintln!("built {out} in {:?}", started.elapsed());
        wasm
    })
    .clone()
}

/// Run a setup command, failing the test with its name when it fails.
fn setup(cmd: &mut Command, what: &str) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(status.success(), "{what} failed");
}

/// The Python `token_mint` example, built with componentize-py at the version its
/// build script pins; installed into `target/lang/venv` from PyPI if the machine lacks it.
pub fn python_example() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let script = "plugins-sdk/python/token_mint/build.sh";
    let text = std::fs::read_to_string(root().join(script)).expect("build.sh");
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("COMPONENTIZE_PY_VERSION="))
        .expect("build.sh pins COMPONENTIZE_PY_VERSION")
        .trim()
        .to_string();
    let installed = Command::new("componentize-py")
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&version));
    let prepare = move || {
        if installed {
            return None;
        }
        let venv = root().join("target/lang/venv");
        let bin = venv.join("bin");
        if !bin.join("componentize-py").is_file() {
            setup(
                Command::new("python3").arg("-m").arg("venv").arg(&venv),
                "python3 -m venv target/lang/venv",
            );
            setup(
                Command::new(bin.join("pip"))
                    .args(["install", "--quiet", "--disable-pip-version-check"])
                    .arg(format!("componentize-py=={version}")),
                "pip install componentize-py",
            );
        }
        Some(bin)
    };
    build_with(&BUILT, "bash", script, "token_mint_py.wasm", prepare)
}

/// The JavaScript `token_mint` example, built with componentize-js (`npm ci` from the
/// committed lockfile when `node_modules` is missing).
pub fn js_example() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let prepare = || {
        let dir = root().join("plugins-sdk/js/token_mint");
        if !dir.join("node_modules").is_dir() {
            setup(
                Command::new("npm")
                    .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                    .current_dir(&dir),
                "npm ci in plugins-sdk/js/token_mint",
            );
        }
        None
    };
    build_with(
        &BUILT,
        "node",
        "plugins-sdk/js/token_mint/build.mjs",
        "token_mint_js.wasm",
        prepare,
    )
}

/// One request as the mock upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query, exactly as received.
    pub target: String,
    /// Headers in arrival order, names lower-case.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Seen {
    /// Every value of header `name`.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The single value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        let all = self.all(name);
        assert!(
            all.len() <= 1,
            "header {name} sent {} times: {all:?}",
            all.len()
        );
        all.first().copied()
    }
}

type Responder = Arc<dyn Fn(&Seen) -> Response + Send + Sync>;

/// A mock upstream on a loopback port, recording every request.
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    /// Answers `200 upstream-ok` to everything.
    pub async fn start() -> Self {
        Self::with(|_| Response::new("upstream-ok".into())).await
    }

    /// Answers with `f`.
    pub async fn with(f: impl Fn(&Seen) -> Response + Send + Sync + 'static) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let responder: Responder = Arc::new(f);
        let (s, r) = (seen.clone(), responder.clone());
        let app = axum::Router::new().fallback(move |req: Request| {
            let (s, r) = (s.clone(), r.clone());
            async move {
                let (parts, body) = req.into_parts();
                let body = axum::body::to_bytes(body, usize::MAX)
                    .await
                    .unwrap_or_default();
                let seen = Seen {
                    method: parts.method.to_string(),
                    target: parts
                        .uri
                        .path_and_query()
                        .map(|p| p.to_string())
                        .unwrap_or_default(),
                    headers: parts
                        .headers
                        .iter()
                        .map(|(n, v)| {
                            (
                                n.as_str().to_string(),
                                String::from_utf8_lossy(v.as_bytes()).into_owned(),
                            )
                        })
                        .collect(),
                    body,
                };
                let resp = r(&seen);
                s.lock().unwrap().push(seen);
                resp
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, seen }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The only request received.
    pub fn one(&self) -> Seen {
        let seen = self.seen();
        assert_eq!(
            seen.len(),
            1,
            "expected exactly one upstream request, got {seen:#?}"
        );
        seen.into_iter().next().unwrap()
    }
}

/// A configuration directory for one Outpost.
pub struct Config {
    pub dir: tempfile::TempDir,
    pub env: HashMap<String, String>,
}

pub const LOCAL_HOSTS: &str =
    "hosts:\n  - id: local\n    cidrs: [127.0.0.1/32, \"::1/128\"]\n    can_call_sensitive: true\n";

impl Config {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("providers")).unwrap();
        std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
        let c = Config {
            dir,
            env: HashMap::new(),
        };
        c.hosts(LOCAL_HOSTS);
        c
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn provider(&self, file: &str, yaml: &str) -> &Self {
        std::fs::write(self.path("providers").join(file), yaml).unwrap();
        self
    }

    pub fn hosts(&self, yaml: &str) -> &Self {
        std::fs::write(self.path("hosts.yaml"), yaml).unwrap();
        self
    }

    pub fn plugin(&self, fixture_name: &str) -> &Self {
        std::fs::copy(
            fixture(fixture_name),
            self.path("plugins").join(format!("{fixture_name}.wasm")),
        )
        .unwrap();
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.insert(k.into(), v.into());
        self
    }

    /// Every environment value that is not one of Outpost's own settings: credentials
    /// and PSKs named by the configuration. (Very short values are ignored: they would
    /// match ordinary log text.)
    pub fn secret_values(&self) -> Vec<String> {
        self.env
            .iter()
            .filter(|(k, v)| {
                !outpost::config::settings::VARIABLES.contains(&k.as_str())
                    && k.as_str() != "OUTPOST_LOG"
                    && v.len() >= 4
            })
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The `outpost` command with this configuration and a clean environment.
    pub fn command(&self, sub: &str) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_outpost"));
        cmd.arg(sub)
            .env_clear()
            .env("PROVIDERS_DIR", self.path("providers"))
            .env("HOSTS_CONFIG_PATH", self.path("hosts.yaml"))
            .env("PLUGINS_DIR", self.path("plugins"))
            .env("OUTPOST_CACHE_DIR", self.path("cache"))
            .env("OUTPOST_PLUGIN_MAX_INSTANCES", "64")
            .env("PROXY_HOST", "127.0.0.1")
            .env("PROXY_PORT", "0")
            .envs(&self.env);
        cmd
    }
}

/// A running `outpost serve`.
pub struct Outpost {
    child: Child,
    /// Values that must never appear in the logs (checked when the process is dropped).
    secrets: Vec<String>,
    pub addr: SocketAddr,
    logs: Arc<Mutex<String>>,
    pub startup: Duration,
}

impl Outpost {
    pub fn start(config: &Config) -> Self {
        let mut o = Self::start_cmd(config.command("serve"));
        o.secrets = config.secret_values();
        o
    }

    pub fn start_cmd(mut cmd: Command) -> Self {
        let started = Instant::now();
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn outpost");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let l = logs.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(i) = line.find("outpost listening on ") {
                    // Text or JSON log line: the address is the run of address characters.
                    let addr: String = line[i + 21..]
                        .chars()
                        .take_while(|c| c.is_ascii_hexdigit() || ".:[]".contains(*c))
                        .collect();
                    let addr: SocketAddr = addr.parse().unwrap();
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
                let mut l = l.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("outpost did not start:\n{}", logs.lock().unwrap());
            }
        };
        Outpost {
            child,
            secrets: Vec::new(),
            addr,
            logs,
            startup: started.elapsed(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The process id (to send signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything logged so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Wait up to `limit` for the process to exit by itself; its status, if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Stop (SIGKILL) and return the logs.
    pub fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(50));
        self.logs()
    }
}

impl Drop for Outpost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Suite-wide guarantee (D18): no secret value ever reaches a log line.
        if !std::thread::panicking() {
            std::thread::sleep(Duration::from_millis(50));
            let logs = self.logs();
            for s in &self.secrets {
                assert!(
                    !logs.contains(s.as_str()),
                    "secret value {s:?} reached the logs:\n{logs}"
                );
            }
        }
    }
}

/// Send raw bytes and read the whole answer (up to 5 s).
pub async fn raw(outpost: &Outpost, request: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(outpost.addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// Status line code of a raw HTTP/1.1 response.
pub fn status_of(resp: &str) -> u16 {
    resp.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// `GET url` with `X-Provider: provider` on a connection of its own (a new client), so
/// Outpost hands it to its next serving thread. Returns the status and the body.
pub async fn get_on_new_connection(url: String, provider: &str) -> (u16, String) {
    let r = client()
        .get(url)
        .header("X-Provider", provider)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Parse an error envelope and return (code, message, metadata).
pub fn envelope(body: &str) -> (String, String, serde_json::Value) {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    assert_eq!(v["status"], "FAILURE", "{body}");
    (
        v["error"]["code"].as_str().unwrap().to_string(),
        v["error"]["message"].as_str().unwrap().to_string(),
        v["error"]["metadata"].clone(),
    )
}

/// A real `redis-server` on a free loopback port, with persistence off; killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = RedisServer {
            child: None,
            port,
            dir: tempfile::tempdir().unwrap(),
        };
        r.restart();
        r
    }

    /// (Re)start on the same port.
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed for the Redis tests (.ci/run installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kill it (state is lost).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Which state backend a test runs against.
#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Embedded,
    Redis,
}

impl Backend {
    /// Configure `cfg` for this backend; keep the returned server alive for the test.
    pub fn apply(self, cfg: Config) -> (Config, Option<RedisServer>) {
        match self {
            Backend::Embedded => (cfg, None),
            Backend::Redis => {
                let r = RedisServer::start();
                (cfg.env("REDIS_URL", &r.url()), Some(r))
            }
        }
    }
}

/// Run an async test case once per backend: `both!(name => case_fn);`
#[macro_export]
macro_rules! both {
    ($name:ident => $case:path) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread")]
            async fn embedded() {
                $case($crate::harness::Backend::Embedded).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn redis() {
                $case($crate::harness::Backend::Redis).await
            }
        }
    };
}
