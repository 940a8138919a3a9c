//! The deploy files (deploy/) against the worker they ship, so that neither drifts from the
//! other without a failing test:
//!
//! - the Dockerfile, modelled layer by layer without Docker: every file it copies exists in the
//!   build context or is produced by a step before it (the fetch scripts are run, the cargo
//!   build stands in for by this build's binaries), its ENV paths exist in the image, its
//!   ENTRYPOINT's flags parse, the worker starts with its settings, `STOPSIGNAL SIGTERM`;
//! - every stop timeout (systemd, compose, Kubernetes) outlasts the drain;
//! - every environment variable the deploy files set is a setting of the worker;
//! - the public ingresses route every telephony WebSocket route of the worker.
//!
//! Needs `cargo build --workspace --bins` first (like every test here).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use cxb_e2e::{bin, repo_root, Worker};

/// What a stop timeout must leave after the drain: persisting the last results after the drain
/// deadline (and, in Kubernetes, the preStop pause before SIGTERM).
const MIN_MARGIN_SECS: u64 = 30;

/// Environment variables read outside the worker's settings (so not in `--help`): the
/// `CONFIG_URL` alias (`Settings::resolve_aliases`), cxb-turn's model paths
/// (`crates/cxb-turn/src/runtime.rs`) and the log filter.
const ENV_OUTSIDE_SETTINGS: &[&str] = &["CONFIG_URL", "CXB_MODELS_DIR", "CXB_ONNXRUNTIME_LIB", "RUST_LOG"];

/// What cxb-turn loads from `CXB_MODELS_DIR` (`crates/cxb-turn/src/runtime.rs`).
const MODEL_FILES: &[&str] = &["libonnxruntime.so", "silero_vad.onnx", "smart-turn-v3.2-cpu.onnx"];

fn read(rel: &str) -> String {
    let path = repo_root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every file under `dir` (relative to the repository root), recursively.
fn files_under(dir: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![repo_root().join(dir)];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn rel(path: &Path) -> String {
    path.strip_prefix(repo_root()).unwrap_or(path).display().to_string()
}

/// `cxb-core --help` and `cxb-core outbox --help` (the operator command's settings), in a
/// clean environment so every `[env: NAME=]` shows no value.
fn worker_help() -> String {
    let mut help = String::new();
    for args in [&["--help"][..], &["outbox", "--help"]] {
        let out = Command::new(bin("cxb-core")).args(args).env_clear().output().expect("run cxb-core --help");
        assert!(out.status.success(), "cxb-core {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        help.push_str(&String::from_utf8(out.stdout).expect("utf-8 help"));
    }
    help
}

/// The environment variables the worker's settings read, from `--help` (`[env: NAME=]`, or
/// `[env: NAME]` for a secret whose value help hides).
fn setting_env_names(help: &str) -> BTreeSet<String> {
    let mut names: BTreeSet<String> =
        help.split("[env: ").skip(1).filter_map(|rest| rest.split(['=', ']']).next()).map(str::to_string).collect();
    // The provider API-key variables are listed after the flags, one per line.
    if let Some(keys) = help.split("Provider API keys").nth(1) {
        names.extend(
            keys.lines().filter_map(|l| l.split_whitespace().next()).filter(|w| is_env_name(w)).map(str::to_string),
        );
    }
    names
}

/// The default of the setting read from `env`, from `--help` (`[env: NAME=] [default: N]`).
fn setting_default(help: &str, env: &str) -> Option<String> {
    let after = &help[help.find(&format!("[env: {env}="))?..];
    let section = after[1..].find("[env: ").map_or(after, |end| &after[..end + 1]);
    let value = &section[section.find("[default: ")? + "[default: ".len()..];
    Some(value[..value.find(']')?].to_string())
}

fn is_env_name(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_uppercase())
        && s.contains('_')
        && s.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// `NAME=value` lines (env files, kustomize literals, Dockerfile ENV pairs), commented or not.
fn assigned_names(text: &str) -> Vec<(String, String)> {
    text.lines()
        .flat_map(|line| line.split_whitespace())
        .map(|word| word.trim_start_matches(['#', '-']))
        .filter_map(|word| word.split_once('='))
        .filter(|(name, _)| is_env_name(name))
        .map(|(name, value)| (name.to_string(), value.trim_matches('"').to_string()))
        .collect()
}

/// Environment variable names in YAML: container `env` entries (`name: NAME`) and compose
/// `environment` keys (`NAME: value`).
fn yaml_env_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
        for piece in line.split("name: ").skip(1) {
            let name = piece.split([',', '}', ' ']).next().unwrap_or_default();
            if is_env_name(name) {
                names.push(name.to_string());
            }
        }
        if let Some((key, _)) = line.split_once(':') {
            if is_env_name(key) {
                names.push(key.to_string());
            }
        }
    }
    names
}

/// A duration as systemd (`720`, `720s`, `12min`) or compose (`720s`, `12m`, `1m30s`) write it.
fn duration_secs(text: &str) -> u64 {
    let text = text.trim().trim_matches('"');
    if let Ok(secs) = text.parse() {
        return secs;
    }
    let (mut total, mut number) = (0, String::new());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let mut unit = c.to_string();
        while let Some(&next) = chars.peek().filter(|n| n.is_ascii_alphabetic()) {
            unit.push(next);
            chars.next();
        }
        let n: u64 = number.parse().unwrap_or_else(|_| panic!("bad duration {text:?}"));
        total += n * match unit.as_str() {
            "s" => 1,
            "m" | "min" => 60,
            "h" => 3600,
            _ => panic!("unit {unit:?} in duration {text:?}"),
        };
        number.clear();
    }
    assert!(number.is_empty(), "bad duration {text:?}");
    total
}

/// The value after `key` on each line that has it (`key` includes its separator).
fn values_of<'a>(text: &'a str, key: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once(key).map(|(_, v)| v.split_whitespace().next().unwrap_or_default()))
        .collect()
}

// ---- the Dockerfile, modelled -------------------------------------------------------------

/// One instruction, continuation lines joined.
struct Instruction {
    keyword: String,
    args: String,
}

fn instructions(dockerfile: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(trimmed);
                let (keyword, args) = current.split_once(char::is_whitespace).expect("instruction with arguments");
                out.push(Instruction { keyword: keyword.to_ascii_uppercase(), args: args.trim().to_string() });
                current.clear();
            }
        }
    }
    out
}

/// One layer's files: image path `image` is host path `host` (a directory layer maps its whole
/// subtree), minus host paths the build context excludes.
struct Layer {
    image: PathBuf,
    host: PathBuf,
    excluded: Vec<PathBuf>,
}

/// A stage's filesystem as layers, newest last.
#[derive(Default)]
struct Layers(Vec<Layer>);

impl Layers {
    fn add(&mut self, image: impl Into<PathBuf>, host: impl Into<PathBuf>, excluded: Vec<PathBuf>) {
        self.0.push(Layer { image: image.into(), host: host.into(), excluded });
    }

    /// The host file behind an image path: the newest layer that has it, as an overlay
    /// filesystem resolves it.
    fn resolve(&self, image: &Path) -> Option<PathBuf> {
        self.0.iter().rev().find_map(|layer| {
            let rest = image.strip_prefix(&layer.image).ok()?;
            // (`join("")` would add a trailing slash, which a file path does not resolve with.)
            let host = if rest.as_os_str().is_empty() { layer.host.clone() } else { layer.host.join(rest) };
            let excluded = layer.excluded.iter().any(|x| host.starts_with(x));
            (!excluded && host.exists()).then_some(host)
        })
    }
}

/// A Dockerfile played against this checkout: what each image path is on this machine.
struct Image {
    layers: Layers,
    env: Vec<(String, String)>,
    volumes: Vec<String>,
    workdir: PathBuf,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    stop_signal: Option<String>,
    user: Option<String>,
    expose: Vec<u16>,
}

impl Image {
    fn new() -> Image {
        Image {
            layers: Layers::default(),
            env: Vec::new(),
            volumes: Vec::new(),
            workdir: PathBuf::from("/"),
            entrypoint: Vec::new(),
            cmd: Vec::new(),
            stop_signal: None,
            user: None,
            expose: Vec::new(),
        }
    }

    fn env(&self, name: &str) -> Option<&str> {
        self.env.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Build context: the repository root, minus deploy/Dockerfile.dockerignore's patterns.
struct Context {
    root: PathBuf,
    excluded: Vec<PathBuf>,
}

impl Context {
    fn new() -> Context {
        let root = repo_root();
        let excluded = read("deploy/Dockerfile.dockerignore")
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.contains('*'))
            .map(|l| root.join(l.trim_matches('/')))
            .collect();
        Context { root, excluded }
    }
}

/// Plays the Dockerfile: stages in order, COPY sources resolved (context or earlier stage),
/// the fetch scripts run into `scratch`, the cargo build's binaries taken from this build.
fn play_dockerfile(scratch: &Path) -> Image {
    let context = Context::new();
    let mut stages: Vec<(Option<String>, Image)> = Vec::new();
    for ins in instructions(&read("deploy/Dockerfile")) {
        if ins.keyword == "FROM" {
            let name = ins.args.split_whitespace().collect::<Vec<_>>();
            let name = (name.len() == 3 && name[1].eq_ignore_ascii_case("as")).then(|| name[2].to_string());
            stages.push((name, Image::new()));
            continue;
        }
        let last = stages.len().checked_sub(1).expect("an instruction before FROM");
        let (done, current) = stages.split_at_mut(last);
        let image = &mut current[0].1;
        let args = ins.args.as_str();
        match ins.keyword.as_str() {
            "WORKDIR" => image.workdir = image.workdir.join(args),
            "COPY" => copy(image, args, &context, done),
            "RUN" => run(image, args, scratch),
            "ENV" => image.env.extend(assigned_names(args)),
            "VOLUME" => image.volumes.extend(args.split_whitespace().map(str::to_string)),
            "ENTRYPOINT" => image.entrypoint = exec_form(args),
            "CMD" => image.cmd = exec_form(args),
            "STOPSIGNAL" => image.stop_signal = Some(args.to_string()),
            "USER" => image.user = Some(args.to_string()),
            "EXPOSE" => image.expose.extend(args.split_whitespace().map(|p| p.parse::<u16>().expect("EXPOSE port"))),
            _ => {}
        }
    }
    stages.pop().expect("a stage").1
}

fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("use the exec form (a JSON array), not {args:?}: {e}"))
}

fn copy(image: &mut Image, args: &str, context: &Context, done: &[(Option<String>, Image)]) {
    let mut words: Vec<&str> = args.split_whitespace().collect();
    let from = words.first().and_then(|w| w.strip_prefix("--from=")).map(str::to_string);
    words.retain(|w| !w.starts_with("--"));
    let (dest, sources) = words.split_last().expect("COPY sources and destination");
    let dest_dir = dest.ends_with('/') || sources.len() > 1;
    let dest = image.workdir.join(dest);
    for src in sources {
        let host = match &from {
            Some(stage) => {
                let (_, built) = done
                    .iter()
                    .find(|(name, _)| name.as_deref() == Some(stage.as_str()))
                    .unwrap_or_else(|| panic!("COPY --from={stage}: no such stage before it"));
                built
                    .layers
                    .resolve(&built.workdir.join(src))
                    .unwrap_or_else(|| panic!("COPY --from={stage} {src}: nothing in that stage produces it"))
            }
            None => {
                let host = context.root.join(src.trim_start_matches("./"));
                assert!(host.exists(), "COPY {src}: not in the repository");
                assert!(
                    !context.excluded.iter().any(|x| host.starts_with(x)),
                    "COPY {src}: excluded by Dockerfile.dockerignore"
                );
                host
            }
        };
        let excluded = if from.is_none() { context.excluded.clone() } else { Vec::new() };
        // A directory's contents land in `dest`; a file lands at `dest` or inside it.
        let target =
            if host.is_file() && dest_dir { dest.join(host.file_name().expect("file name")) } else { dest.clone() };
        image.layers.add(target, host, excluded);
    }
}

/// RUN steps the model knows: the repository's fetch scripts (run for real into `scratch`,
/// starting from the copies the test command already fetched, so nothing is downloaded twice),
/// `rm`, and `cargo build` (this build's binaries stand in for the release ones). Other steps
/// (apt-get, useradd) add no file the image copies.
fn run(image: &mut Image, args: &str, scratch: &Path) {
    for step in args.split("&&").map(str::split_whitespace) {
        let words: Vec<&str> = step.collect();
        match words.as_slice() {
            [script, dest] if script.ends_with(".sh") => {
                let script_image = image.workdir.join(script);
                let host_script = image
                    .layers
                    .resolve(&script_image)
                    .unwrap_or_else(|| panic!("RUN {script}: not copied into the image before this step"));
                let mode =
                    std::os::unix::fs::PermissionsExt::mode(&host_script.metadata().expect("script").permissions());
                assert!(mode & 0o111 != 0, "RUN {script}: not executable (COPY keeps the mode)");
                let out = scratch.join(dest.trim_start_matches('/'));
                seed_from_cache(&host_script, &out);
                let status = Command::new("bash").arg(&host_script).arg(&out).status().expect("run fetch script");
                assert!(status.success(), "RUN {script} {dest} failed");
                image.layers.add(*dest, out, Vec::new());
            }
            ["rm", flags @ .., path] if flags.iter().all(|f| f.starts_with('-')) => {
                if let Some(host) = image.layers.resolve(Path::new(path)) {
                    assert!(host.starts_with(scratch), "RUN rm {path}: would remove {}", host.display());
                    std::fs::remove_dir_all(&host).or_else(|_| std::fs::remove_file(&host)).expect("rm");
                }
            }
            ["cargo", "build", rest @ ..] => cargo_build(image, rest),
            _ => {}
        }
    }
}

/// The fetch scripts skip files already present with their pinned hashes: seed `out` with the
/// copies the test command (`scripts/test.sh`) fetched into the scripts' default place.
fn seed_from_cache(script: &Path, out: &Path) {
    let cache = match script.file_name().and_then(|n| n.to_str()) {
        Some("fetch-livekit-ffi.sh") => repo_root().join("target/livekit-ffi"),
        Some("fetch-models.sh") => repo_root().join("target/models"),
        _ => return,
    };
    std::fs::create_dir_all(out).expect("mkdir");
    let Ok(entries) = std::fs::read_dir(&cache) else { return };
    for entry in entries.flatten() {
        let (from, to) = (entry.path(), out.join(entry.file_name()));
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if let Ok(link) = std::fs::read_link(&from) {
            std::os::unix::fs::symlink(link, &to).expect("symlink");
        } else if from.is_file() && std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).expect("copy");
        }
    }
}

fn cargo_build(image: &mut Image, args: &[&str]) {
    let profile = if args.contains(&"--release") { "release" } else { "debug" };
    let mut words = args.iter();
    while let Some(word) = words.next() {
        match *word {
            "--bin" => {
                let name = words.next().expect("--bin NAME");
                image.layers.add(image.workdir.join("target").join(profile).join(name), bin(name), Vec::new());
            }
            "--features" | "-F" => {
                for feature in words.next().expect("--features LIST").split(',') {
                    assert_feature_exists(feature);
                }
            }
            _ => {}
        }
    }
}

/// `package/feature` must be a feature in that workspace package's Cargo.toml.
fn assert_feature_exists(feature: &str) {
    let (package, name) = feature.split_once('/').expect("features as package/feature");
    let manifest = files_under("crates")
        .into_iter()
        .chain(files_under("bins"))
        .filter(|p| p.file_name().is_some_and(|n| n == "Cargo.toml"))
        .map(|p| std::fs::read_to_string(p).expect("Cargo.toml"))
        .find(|toml| toml.lines().any(|l| l.trim() == format!("name = \"{package}\"")))
        .unwrap_or_else(|| panic!("--features {feature}: no workspace package {package}"));
    let features = manifest.split("[features]").nth(1).map(|s| s.split("\n[").next().unwrap_or(s)).unwrap_or("");
    assert!(
        features.lines().any(|l| l.split('=').next().map(str::trim) == Some(name)),
        "--features {feature}: {package} has no feature {name}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dockerfile_image_has_every_file_and_starts_the_worker() {
    let scratch = tempfile::tempdir_in(repo_root().join("target")).expect("scratch dir");
    let image = play_dockerfile(scratch.path());
    let help = worker_help();

    // The entrypoint is the worker built by the Dockerfile, and its flags parse.
    let (program, flags) = image.entrypoint.split_first().expect("an ENTRYPOINT");
    assert_eq!(image.layers.resolve(Path::new(program)), Some(bin("cxb-core")), "ENTRYPOINT runs {program}");
    let args: Vec<&String> = flags.iter().chain(&image.cmd).collect();
    let out = Command::new(bin("cxb-core")).args(&args).arg("--help").env_clear().output().expect("run");
    assert!(out.status.success(), "cxb-core {args:?} --help: {}", String::from_utf8_lossy(&out.stderr));

    assert_eq!(image.stop_signal.as_deref(), Some("SIGTERM"), "STOPSIGNAL SIGTERM starts the drain");
    let user = image.user.as_deref().expect("a USER");
    let uid: u32 = user.split(':').next().unwrap_or_default().parse().expect("a numeric USER (runAsNonRoot checks it)");
    assert_ne!(uid, 0, "the worker does not run as root");
    let statefulset = read("deploy/kubernetes/base/statefulset.yaml");
    let k8s_uid = values_of(&statefulset, "runAsUser: ");
    assert_eq!(k8s_uid, [uid.to_string()], "the StatefulSet runs as the image's user");

    // Every ENV is a setting, every path in it exists in the image (or is its volume).
    for (name, value) in &image.env {
        assert!(
            setting_env_names(&help).contains(name) || ENV_OUTSIDE_SETTINGS.contains(&name.as_str()),
            "Dockerfile ENV {name} is no setting of cxb-core"
        );
        if value.starts_with('/') && !image.volumes.iter().any(|v| Path::new(value).starts_with(v)) {
            assert!(image.layers.resolve(Path::new(value)).is_some(), "ENV {name}={value}: not in the image");
        }
    }
    let data_dir = image.env("CXBCORE_DATA_DIR").expect("CXBCORE_DATA_DIR set");
    assert!(image.volumes.iter().any(|v| v == data_dir), "CXBCORE_DATA_DIR={data_dir} is the image's VOLUME");
    let models = Path::new(image.env("CXB_MODELS_DIR").expect("CXB_MODELS_DIR set"));
    for file in MODEL_FILES {
        assert!(image.layers.resolve(&models.join(file)).is_some(), "{file} missing from {}", models.display());
    }
    let listen: std::net::SocketAddr = image.env("LISTEN_ADDR").expect("LISTEN_ADDR set").parse().expect("address");
    assert_eq!(image.expose, [listen.port()], "EXPOSE the port the worker listens on");

    // The worker starts on the image's settings (paths as this machine has them; its own port
    // and data dir) and serves /health.
    let env: Vec<(&str, String)> = image
        .env
        .iter()
        .filter(|(name, _)| name != "LISTEN_ADDR" && name != "CXBCORE_DATA_DIR")
        .map(|(name, value)| {
            let host = value.starts_with('/').then(|| image.layers.resolve(Path::new(value))).flatten();
            (name.as_str(), host.map_or(value.clone(), |h| h.display().to_string()))
        })
        .collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let worker = Worker::start(None, &env).await;
    let health = worker.health().await;
    assert_eq!(health["status"], "ok", "{health}");
}

#[test]
fn stop_timeouts_outlast_the_drain() {
    let help = worker_help();
    let default: u64 = setting_default(&help, "CXBCORE_DRAIN_SECS")
        .expect("CXBCORE_DRAIN_SECS has a default in --help")
        .parse()
        .expect("numeric drain default");
    // A deploy file that sets the drain itself (even as a commented example) raises the bar.
    let mut drain = (default, "the worker's default".to_string());
    for file in files_under("deploy") {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for (name, value) in assigned_names(&text) {
            if name == "CXBCORE_DRAIN_SECS" {
                let secs = duration_secs(&value);
                if secs > drain.0 {
                    drain = (secs, rel(&file));
                }
            }
        }
    }
    let need = drain.0 + MIN_MARGIN_SECS;

    let mut timeouts: Vec<(String, u64)> = Vec::new();
    let unit = read("deploy/cxb-core.service");
    let systemd = values_of(&unit, "TimeoutStopSec=");
    assert_eq!(systemd.len(), 1, "cxb-core.service sets TimeoutStopSec once");
    assert_eq!(values_of(&unit, "KillSignal="), ["SIGTERM"]);
    timeouts.push(("deploy/cxb-core.service TimeoutStopSec".into(), duration_secs(systemd[0])));
    for file in files_under("deploy").into_iter().filter(|f| f.to_string_lossy().contains("compose")) {
        let text = std::fs::read_to_string(&file).expect("compose file");
        // Only composes that run the worker (deploy/livekit/ runs LiveKit's own servers).
        if text.contains("deploy/Dockerfile") {
            let grace = values_of(&text, "stop_grace_period: ");
            assert_eq!(grace.len(), 1, "{}: set stop_grace_period (compose's default is 10 s)", rel(&file));
            timeouts.push((format!("{} stop_grace_period", rel(&file)), duration_secs(grace[0])));
        }
    }
    let manifests: Vec<(PathBuf, String)> = files_under("deploy/kubernetes")
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "yaml"))
        .map(|f| (f.clone(), std::fs::read_to_string(&f).expect("manifest")))
        .collect();
    // The preStop pause runs inside the grace period, before SIGTERM starts the drain.
    let pause = manifests
        .iter()
        .flat_map(|(_, text)| text.split(r#"["sleep", ""#).skip(1))
        .filter_map(|rest| rest.split('"').next())
        .map(duration_secs)
        .max()
        .unwrap_or(0);
    let mut k8s = 0;
    for (file, text) in &manifests {
        for value in values_of(text, "terminationGracePeriodSeconds: ") {
            let secs = duration_secs(value).saturating_sub(pause);
            timeouts.push((format!("{} terminationGracePeriodSeconds less the {pause} s preStop", rel(file)), secs));
            k8s += 1;
        }
    }
    assert!(k8s > 0, "the StatefulSet sets terminationGracePeriodSeconds");
    assert!(timeouts.iter().any(|(what, _)| what.contains("compose")), "the worker's compose file is checked");

    for (what, secs) in &timeouts {
        assert!(
            *secs >= need,
            "{what} = {secs} s, but the drain is {} s ({}): it needs at least {need} s, or live calls are killed",
            drain.0,
            drain.1
        );
    }
}

#[test]
fn deploy_files_set_only_real_settings() {
    let known = setting_env_names(&worker_help());
    assert!(known.contains("CXBCORE_DRAIN_SECS") && known.contains("LISTEN_ADDR"), "--help lists the env names");
    let mut unknown = BTreeSet::new();
    let mut seen = 0;
    for file in files_under("deploy") {
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        // deploy/livekit/ configures LiveKit's own servers, not the worker.
        if file.starts_with(repo_root().join("deploy/livekit")) || name.ends_with(".py") || name.ends_with(".sh") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let names: Vec<String> = if name.ends_with(".yaml") || name.ends_with(".yml") {
            let mut names = yaml_env_names(&text);
            // kustomize literals (`- NAME=value`).
            names.extend(assigned_names(&text).into_iter().map(|(n, _)| n));
            names
        } else {
            assigned_names(&text).into_iter().map(|(n, _)| n).collect()
        };
        for env in names {
            seen += 1;
            if !known.contains(&env) && !ENV_OUTSIDE_SETTINGS.contains(&env.as_str()) {
                unknown.insert(format!("{env} ({})", rel(&file)));
            }
        }
    }
    assert!(seen > 20, "found the deploy files' settings ({seen})");
    assert!(unknown.is_empty(), "deploy files set variables cxb-core does not read: {unknown:?}");
}

#[test]
fn public_ingresses_route_every_telephony_websocket() {
    // The worker's WebSocket call routes: every `/{transport}/{bot_id}` route.
    let mut routes = BTreeSet::new();
    for file in files_under("crates/cxb-core/src").into_iter().filter(|f| f.extension().is_some_and(|e| e == "rs")) {
        let text = std::fs::read_to_string(&file).expect("source");
        for piece in text.split(".route(\"").skip(1) {
            if let Some(prefix) = piece.split_once("{bot_id}\"").map(|(p, _)| p).filter(|p| !p.contains('"')) {
                routes.insert(prefix.to_string());
            }
        }
    }
    assert!(routes.contains("/ws/") && routes.len() >= 6, "found the WebSocket routes: {routes:?}");

    let haproxy = read("deploy/haproxy.cfg");
    let acl: BTreeSet<String> = haproxy
        .lines()
        .find_map(|l| l.trim().strip_prefix("acl is_call_ws path_beg "))
        .expect("haproxy.cfg: acl is_call_ws")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(acl, routes, "deploy/haproxy.cfg routes exactly the worker's telephony WebSockets");

    let ingress = read("deploy/kubernetes/overlays/production/ingress.yaml");
    let paths: BTreeSet<String> =
        values_of(&ingress, "path: ").into_iter().map(|p| p.trim_end_matches(',').to_string()).collect();
    assert_eq!(paths, routes, "the production Ingress routes exactly the worker's telephony WebSockets");

    let checked = read("deploy/check_proxies.py");
    let line = checked.lines().find(|l| l.starts_with("TELEPHONY = ")).expect("check_proxies.py TELEPHONY");
    let driven: BTreeSet<String> = line.split('"').skip(1).step_by(2).map(str::to_string).collect();
    assert_eq!(driven, routes, "deploy/check_proxies.py drives every telephony route");
}

#[test]
fn the_parsers_read_what_the_files_write() {
    assert_eq!(duration_secs("720"), 720);
    assert_eq!(duration_secs("720s"), 720);
    assert_eq!(duration_secs("12min"), 720);
    assert_eq!(duration_secs("1m30s"), 90);
    assert_eq!(duration_secs("\"660\""), 660);
    let help =
        "  --a <A>\n      [env: A_B=]\n      [default: 5]\n  --drain <D>\n      [env: C_D=]\n      [default: 660]\n  \
                --secret <S>\n      [env: E_F]\n";
    assert_eq!(setting_env_names(help), ["A_B", "C_D", "E_F"].map(str::to_string).into());
    assert_eq!(setting_default(help, "A_B").as_deref(), Some("5"));
    assert_eq!(setting_default(help, "C_D").as_deref(), Some("660"));
    assert_eq!(
        assigned_names("#CXBCORE_DRAIN_SECS=660\n      - MAX_CONCURRENT_CALLS=20\nENV A_B=/x C_D=\"y\"\nlower=1"),
        [("CXBCORE_DRAIN_SECS", "660"), ("MAX_CONCURRENT_CALLS", "20"), ("A_B", "/x"), ("C_D", "y")]
            .map(|(n, v)| (n.to_string(), v.to_string()))
    );
    assert_eq!(
        yaml_env_names("- {name: OPENAI_API_KEY, valueFrom: x}\n  - name: cxb-core\n      LOG_FORMAT: json\n"),
        ["OPENAI_API_KEY", "LOG_FORMAT"]
    );
}
