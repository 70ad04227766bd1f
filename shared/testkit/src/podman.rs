//! A real container engine for tests: `podman system service` on a socket of its own, serving
//! the Docker Engine API that region agents (and builders) speak. `scripts/install-podman.sh`
//! installs podman, runc and a static busybox; test images are built `FROM scratch` around
//! that busybox ([`Podman::build_www_image`]).
//!
//! Where podman is missing, [`Podman::start`] says so loudly and returns `None` (the test
//! skips), except under `CI=true`, where it fails: CI must run the container tests.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tempfile::TempDir;

/// How a [`Podman`] service differs from the default one.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Its own image and container storage: an engine that has only what it pulls or builds
    /// (another host's, as far as images go).
    pub own_storage: bool,
    /// A registry it talks to over plain HTTP (`127.0.0.1:<port>`: [`Registry`]).
    pub insecure_registry: Option<String>,
}

pub struct Podman {
    dir: TempDir,
    options: Options,
    service: Child,
    socket: PathBuf,
    /// Image references removed when it stops (the storage outlives the service).
    images: std::sync::Mutex<Vec<String>>,
}

impl Podman {
    /// Starts a podman service on a new socket and waits until it answers.
    pub fn start() -> Option<Podman> {
        Self::start_with(Options::default())
    }

    /// [`start`](Self::start), as `options` say.
    pub fn start_with(options: Options) -> Option<Podman> {
        if Command::new("podman")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .map_or(true, |s| !s.success())
        {
            let message = "podman is not installed (scripts/install-podman.sh installs it): \
                           the container tests cannot run";
            assert!(std::env::var("CI").as_deref() != Ok("true"), "{message}");
            eprintln!("\n!!!!! SKIPPED: {message} !!!!!\n");
            return None;
        }
        let dir = tempfile::tempdir().expect("a podman test directory");
        std::fs::write(dir.path().join("containers.conf"), containers_conf())
            .expect("writing containers.conf");
        if let Some(registry) = &options.insecure_registry {
            std::fs::write(
                dir.path().join("registries.conf"),
                format!("[[registry]]\nlocation = \"{registry}\"\ninsecure = true\n"),
            )
            .expect("writing registries.conf");
        }
        let socket = dir.path().join("podman.sock");
        let log = std::fs::File::create(dir.path().join("service.log")).expect("service log");
        let mut service = command(dir.path(), &options);
        let mut podman = Self {
            service: service
                .args(["system", "service", "--time=0"])
                .arg(format!("unix://{}", socket.display()))
                .stdout(log.try_clone().expect("service log"))
                .stderr(log)
                .spawn()
                .expect("starting podman system service"),
            dir,
            options,
            socket,
            images: Default::default(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !podman.answers() {
            if let Ok(Some(status)) = podman.service.try_wait() {
                panic!(
                    "podman system service exited ({status}): {}",
                    podman.service_log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "podman system service did not answer within 30 s: {}",
                podman.service_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(podman)
    }

    /// The engine's address for `SLIPWAY_AGENT_DOCKER_HOST` / `DOCKER_HOST`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The podman CLI, configured as the service is.
    pub fn cli(&self) -> Command {
        command(self.dir.path(), &self.options)
    }

    /// Runs the podman CLI with `args`; its stdout, or a panic with its stderr.
    pub fn run(&self, args: &[&str]) -> String {
        let out = self.cli().args(args).output().expect("running podman");
        assert!(
            out.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Builds `tag` from scratch: a static busybox whose httpd serves `files` (path → content;
    /// `healthz` always) on `$PORT`, and `/env`: the environment it started with.
    pub fn build_www_image(&self, tag: &str, files: &[(&str, &str)]) {
        let context = tempfile::tempdir().expect("a build context");
        write_www_context(context.path(), files);
        self.run(&[
            "build",
            "-q",
            "-t",
            tag,
            &context.path().display().to_string(),
        ]);
        self.remove_when_done(tag);
    }

    /// The ids of the images of `reference` (`localhost/slipway/<project>`, say).
    pub fn images(&self, reference: &str) -> Vec<String> {
        let filter = format!("reference={reference}");
        self.cli()
            .args(["images", "-q", "--filter", &filter])
            .output()
            .map(|out| {
                String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Removes the images of `reference` (`localhost/slipway/<project>`, say) when it stops.
    pub fn remove_when_done(&self, reference: &str) {
        if let Ok(mut images) = self.images.lock() {
            images.push(reference.to_string());
        }
    }

    /// The containers that carry every label of `labels`, running or not: their ids.
    pub fn containers_labelled(&self, labels: &[(&str, &str)]) -> Vec<String> {
        let mut args = vec!["ps", "-a", "-q", "--no-trunc"];
        let filters: Vec<String> = labels
            .iter()
            .map(|(label, value)| format!("label={label}={value}"))
            .collect();
        for filter in &filters {
            args.extend(["--filter", filter]);
        }
        self.run(&args).lines().map(str::to_string).collect()
    }

    fn answers(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::os::unix::net::UnixStream::connect(&self.socket) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer.starts_with("HTTP/1.") && answer.contains(" 200 ")
    }

    fn service_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("service.log")).unwrap_or_default()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let references = self.images.lock().map(|i| i.clone()).unwrap_or_default();
        for reference in references {
            let ids = self.images(&reference);
            if !ids.is_empty() {
                let _ = self
                    .cli()
                    .args(["rmi", "--force"])
                    .args(&ids)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let _ = self.service.kill();
        let _ = self.service.wait();
    }
}

/// `podman` with the configuration written in `dir`.
fn command(dir: &Path, options: &Options) -> Command {
    let mut cmd = Command::new("podman");
    cmd.env("CONTAINERS_CONF", dir.join("containers.conf"));
    if options.insecure_registry.is_some() {
        cmd.env("CONTAINERS_REGISTRIES_CONF", dir.join("registries.conf"));
    }
    if options.own_storage {
        cmd.arg("--root")
            .arg(dir.join("storage"))
            .arg("--runroot")
            .arg(dir.join("run"));
    }
    cmd
}

/// A container registry for tests: Debian's `docker-registry` (the CNCF distribution
/// registry) serving plain HTTP on a free port of 127.0.0.1, with storage of its own.
pub struct Registry {
    _dir: TempDir,
    child: Child,
    /// `127.0.0.1:<port>`.
    pub address: String,
    /// Whether it wants [`REGISTRY_USER`] and [`REGISTRY_PASSWORD`].
    login: bool,
}

/// Who a registry started with [`Registry::start_with_login`] lets in.
pub const REGISTRY_USER: &str = "slipway";
pub const REGISTRY_PASSWORD: &str = "slipway-test-password";
/// `REGISTRY_USER:REGISTRY_PASSWORD` in base64, as HTTP basic authentication and Docker's
/// `config.json` carry it.
const REGISTRY_BASIC: &str = "c2xpcHdheTpzbGlwd2F5LXRlc3QtcGFzc3dvcmQ=";
/// The registry's htpasswd line (bcrypt, the only form it takes; cost 4, made once).
const REGISTRY_HTPASSWD: &str =
    "slipway:$2a$04$JybYAp1chCytzOCuQdHYeucOVdD4djRenA5SOYQKsSBCg7c7AFyom";

impl Registry {
    /// Starts one and waits until it answers; `None` (or a failure under `CI=true`) where
    /// `docker-registry` is not installed.
    pub fn start() -> Option<Registry> {
        Self::start_as(false)
    }

    /// [`Registry::start`], letting in only [`REGISTRY_USER`] with [`REGISTRY_PASSWORD`]
    /// (HTTP basic authentication).
    pub fn start_with_login() -> Option<Registry> {
        Self::start_as(true)
    }

    /// A Docker `config.json` in `dir` holding this registry's login.
    pub fn auth_file(&self, dir: &Path) -> PathBuf {
        let path = dir.join("config.json");
        let json = serde_json::json!({"auths": {&self.address: {"auth": REGISTRY_BASIC}}});
        std::fs::write(&path, json.to_string()).expect("writing the registry credentials");
        path
    }

    fn start_as(login: bool) -> Option<Registry> {
        if Command::new("docker-registry")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .map_or(true, |s| !s.success())
        {
            let message = "docker-registry is not installed (scripts/install-podman.sh \
                           installs it): the registry tests cannot run";
            assert!(std::env::var("CI").as_deref() != Ok("true"), "{message}");
            eprintln!("\n!!!!! SKIPPED: {message} !!!!!\n");
            return None;
        }
        let dir = tempfile::tempdir().expect("a registry directory");
        let port = crate::ports::free_port().expect("a free port");
        let address = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        let mut yaml = format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {address}\n",
            dir.path().join("data").display()
        );
        if login {
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{REGISTRY_HTPASSWD}\n")).expect("htpasswd");
            yaml += &format!(
                "auth:\n  htpasswd:\n    realm: slipway\n    path: {}\n",
                htpasswd.display()
            );
        }
        std::fs::write(&config, yaml).expect("writing the registry's config");
        let log = std::fs::File::create(dir.path().join("log")).expect("registry log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(log.try_clone().expect("registry log"))
            .stderr(log)
            .spawn()
            .expect("starting docker-registry");
        let registry = Registry {
            _dir: dir,
            child,
            address,
            login,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&registry.address).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(registry)
    }

    /// The tags the registry holds of repository `name` (`slipway/proj_…`).
    pub fn tags(&self, name: &str) -> Vec<String> {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(&self.address) else {
            return vec![];
        };
        let authorization = match self.login {
            true => format!("Authorization: Basic {REGISTRY_BASIC}\r\n"),
            false => String::new(),
        };
        let request =
            format!("GET /v2/{name}/tags/list HTTP/1.0\r\nHost: r\r\n{authorization}\r\n");
        if s.write_all(request.as_bytes()).is_err() {
            return vec![];
        }
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        let body = answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["tags"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|t| t.as_str().map(str::to_string))
            .collect()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A build context: a Dockerfile from scratch around the host's static busybox, serving
/// `files` (and `healthz`) on `$PORT`.
pub fn write_www_context(dir: &Path, files: &[(&str, &str)]) {
    std::fs::create_dir_all(dir).expect("a build context directory");
    let busybox = Path::new("/bin/busybox");
    std::fs::copy(busybox, dir.join("busybox")).expect("copying /bin/busybox (busybox-static)");
    let www = dir.join("www");
    std::fs::create_dir_all(&www).expect("www dir");
    std::fs::write(www.join("healthz"), "ok\n").expect("healthz");
    for (path, content) in files {
        let path = www.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("www subdir");
        }
        std::fs::write(path, content).expect("www file");
    }
    std::fs::write(dir.join("Dockerfile"), WWW_DOCKERFILE).expect("Dockerfile");
}

/// Serves `/www` on `$PORT` (the agent sets it) in the foreground, logging each request;
/// `/env` shows the environment it started with.
pub const WWW_DOCKERFILE: &str = r#"FROM scratch
COPY busybox /bin/busybox
COPY www /www
CMD ["/bin/busybox", "sh", "-c", "echo serving on $PORT; /bin/busybox env > /www/env; exec /bin/busybox httpd -f -vv -p $PORT -h /www"]
"#;

/// runc and the cgroupfs manager (crun and systemd fail on these machines), and ulimits within
/// the hard limits this process has (podman's default nofile of 1048576 is refused).
fn containers_conf() -> String {
    let hard = |flag: &str| {
        Command::new("sh")
            .args(["-c", &format!("ulimit -H{flag}")])
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(1024)
            .min(65_536)
    };
    // Raising nproc to the hard limit is refused too on some machines (65536 was, 32768 not).
    let (nofile, nproc) = (hard("n"), hard("u").min(4096));
    format!(
        "[containers]\ndefault_ulimits = [\"nofile={nofile}:{nofile}\", \"nproc={nproc}:{nproc}\"]\n\n\
         [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n"
    )
}

/// Removes the containers of the agents of `scope` ([`slipway_core::krane::labels::SCOPE`])
/// from the podman service at `host`, if one answers there.
pub fn remove_scope(host: &str, scope: &str) {
    let Some(socket) = host.strip_prefix("unix://") else {
        return;
    };
    if !Path::new(socket).exists() {
        return;
    }
    // Listed, then removed by id: `podman rm --filter` (4.3) removed only one of several.
    let label = format!("label={}={scope}", slipway_core::krane::labels::SCOPE);
    let Ok(listed) = Command::new("podman")
        .args(["--url", host, "ps", "-a", "-q", "--filter", &label])
        .output()
    else {
        return;
    };
    let ids: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    if ids.is_empty() {
        return;
    }
    let _ = Command::new("podman")
        .args(["--url", host, "rm", "--force", "--time", "0"])
        .args(&ids)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
