//! Ekko as the distributed services, all real on loopback: ekko-api (with
//! its conductor) on MariaDB and Keystone, two ekko-backup processes acting
//! as two compute hosts (each with a qemu-storage-daemon as its instance,
//! no database credentials), RabbitMQ between them and Swift for the data.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{free_port, keystone_section, mariadb_db, rabbit_lock, service_env};
use crate::qsd::{identical, Qsd};

const MIB: u64 = 1 << 20;

/// A service process, killed with the test.
struct Service {
    name: String,
    child: Option<Child>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
}

impl Service {
    fn start(bin: &str, conf: &Path, log: PathBuf, env: &[(&str, &str)]) -> Service {
        let mut s = Service {
            name: bin.to_string(),
            child: None,
            args: vec!["--config-file".into(), conf.display().to_string()],
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            log,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let bin = match self.name.as_str() {
            "ekko-api" => env!("CARGO_BIN_EXE_ekko-api"),
            _ => env!("CARGO_BIN_EXE_ekko-backup"),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(bin);
        for (k, _) in std::env::vars() {
            if k.starts_with("EKKO__") || k == "EKKO_FAILPOINT" {
                cmd.env_remove(k);
            }
        }
        cmd.args(&self.args)
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log);
        self.child = Some(cmd.spawn().unwrap());
    }

    fn restart_with(&mut self, env: &[(&str, &str)]) {
        self.kill9();
        self.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.spawn();
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether the process exited by itself (e.g. killed by a failpoint).
    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_some())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill9();
    }
}

async fn token(user: &str, password: &str, project: &str) -> String {
    let auth_url = std::env::var("EKKO_KEYSTONE_AUTH_URL").unwrap();
    let body = json!({"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": std::env::var(user).unwrap(),
            "domain": {"name": "Default"},
            "password": std::env::var(password).unwrap(),
        }}},
        "scope": {"project": {"name": project, "domain": {"name": "Default"}}},
    }});
    let resp = reqwest::Client::new()
        .post(format!("{auth_url}/auth/tokens?nocatalog"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "token: {}", resp.status());
    resp.headers()["X-Subject-Token"]
        .to_str()
        .unwrap()
        .to_string()
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base))
            .header("X-Auth-Token", &self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let text = resp.text().await.unwrap_or_default();
                (status, serde_json::from_str(&text).unwrap_or(Value::Null))
            }
            Err(e) => (0, json!({ "transport_error": e.to_string() })),
        }
    }

    /// Ask for a backup of `instance` and wait until it ends; returns the
    /// final backup body.
    async fn backup(&self, instance: &str, mode: &str, wait: Duration) -> Value {
        let (s, v) = self
            .call(
                "POST",
                "/v1/backups",
                Some(json!({"backup": {"instance_id": instance, "mode": mode}})),
            )
            .await;
        assert_eq!(s, 202, "{v}");
        let id = v["backup"]["id"].as_str().unwrap().to_string();
        self.wait_for(&id, &["available", "error"], wait).await
    }

    async fn wait_for(&self, id: &str, states: &[&str], wait: Duration) -> Value {
        let deadline = Instant::now() + wait;
        loop {
            let (s, v) = self.call("GET", &format!("/v1/backups/{id}"), None).await;
            if s == 200 && states.contains(&v["backup"]["status"].as_str().unwrap_or("")) {
                return v["backup"].clone();
            }
            assert!(
                Instant::now() < deadline,
                "backup {id} did not reach {states:?}: {v}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// One compute host: its instance (a qemu-storage-daemon) and its worker.
struct Host {
    name: String,
    instance: String,
    qsd: Qsd,
    worker: Service,
}

struct Cluster {
    dir: PathBuf,
    api: Service,
    hosts: Vec<Host>,
    member: Client,
    /// Config for the operator CLI on the same catalog and store.
    operator_conf: PathBuf,
    _db: crate::helpers::TestDb,
}

impl Cluster {
    fn restore_cli(&self, backup: &str, out: &Path) {
        let o = Command::new(env!("CARGO_BIN_EXE_ekko"))
            .args(["--config-file", self.operator_conf.to_str().unwrap()])
            .args(["restore", backup, "--output"])
            .arg(out)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "restore {backup}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// Restore `backup` and compare it with the host's disk as it is now.
    fn assert_restores(&self, host: &Host, backup: &str, tag: &str) {
        let reference = self.dir.join(format!("{tag}-ref.raw"));
        host.qsd.snapshot_to(0, &reference);
        let out = self.dir.join(format!("{tag}-restored.raw"));
        self.restore_cli(backup, &out);
        assert!(
            identical(&reference, &out),
            "{tag}: restore of {backup} differs from the disk"
        );
    }
}

async fn start_cluster(dir: &Path, swift_proxy: Option<String>) -> Option<Cluster> {
    ekko::cli::install_crypto_provider();
    let amqp = service_env("EKKO_AMQP_URL")?;
    let keystone = keystone_section()?;
    let demo_project = service_env("EKKO_DEMO_PROJECT_ID")?;
    let t = mariadb_db()?;
    t.db.sync().unwrap();
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let exchange = format!("ekko-test-{tag}");
    // `default` goes into [DEFAULT], `swift` into [swift].
    let common = |state: &str, default: &str, swift: &str| {
        format!(
            "[DEFAULT]\ntransport_url = {amqp}\ncontrol_exchange = {exchange}\nstate_path = {}\n{default}\
             [storage]\nbackend = swift\n[swift]\ncontainer_prefix = ekko-{tag}-\n{swift}{keystone}",
            dir.join(state).display()
        )
    };
    let api_port = free_port();
    let api_conf = dir.join("api.conf");
    std::fs::write(
        &api_conf,
        format!(
            "{}[database]\nconnection = {}\n[api]\nbind_host = 127.0.0.1\nbind_port = {api_port}\n\
             [backup]\njob_stall_timeout = 20\n",
            common("api", "", ""),
            t.url
        ),
    )
    .unwrap();
    let operator_conf = dir.join("operator.conf");
    std::fs::write(
        &operator_conf,
        format!(
            "{}[database]\nconnection = {}\n",
            common("operator", "", ""),
            t.url
        ),
    )
    .unwrap();
    let api = Service::start("ekko-api", &api_conf, dir.join("api.log"), &[]);

    let mut hosts = Vec::new();
    for (i, name) in ["a", "b"].iter().enumerate() {
        let host = format!("host-{name}-{tag}");
        let instance = format!("inst-{name}-{tag}");
        let qdir = dir.join(format!("qsd-{name}"));
        std::fs::create_dir_all(&qdir).unwrap();
        let qsd = Qsd::start(&qdir, &[64 * MIB]);
        let discovery = dir.join(format!("discovery-{name}"));
        std::fs::create_dir_all(&discovery).unwrap();
        std::fs::write(
            discovery.join(format!("{instance}.json")),
            json!({"project_id": demo_project, "name": format!("vm-{name}"),
                   "qmp_socket": qsd.qmp_socket})
            .to_string(),
        )
        .unwrap();
        // Host b reaches Swift through the fault-injecting proxy.
        let swift = match (&swift_proxy, i) {
            (Some(url), 1) => format!("endpoint_override = {url}\nmax_retries = 8\n"),
            _ => String::new(),
        };
        let conf = dir.join(format!("host-{name}.conf"));
        std::fs::write(
            &conf,
            format!(
                "{}[backup]\nheartbeat_interval = 1\ndiscovery_dir = {}\nshutdown_timeout = 5\n",
                common(
                    &format!("state-{name}"),
                    &format!("host = {host}\n"),
                    &swift
                ),
                discovery.display()
            ),
        )
        .unwrap();
        let worker = Service::start(
            "ekko-backup",
            &conf,
            dir.join(format!("worker-{name}.log")),
            &[],
        );
        hosts.push(Host {
            name: host,
            instance,
            qsd,
            worker,
        });
    }
    let base = format!("http://127.0.0.1:{api_port}");
    let member = Client {
        http: reqwest::Client::new(),
        base,
        token: token("EKKO_DEMO_USERNAME", "EKKO_DEMO_PASSWORD", "demo").await,
    };
    // Both hosts report their instance to the conductor.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (s, v) = member.call("GET", "/v1/instances", None).await;
        let listed: Vec<&str> = v["instances"]
            .as_array()
            .map(|a| a.iter().filter_map(|i| i["id"].as_str()).collect())
            .unwrap_or_default();
        if s == 200 && hosts.iter().all(|h| listed.contains(&h.instance.as_str())) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "instances never reported ({s} {v}); api: {}\nworker a: {}",
            api.log(),
            hosts[0].worker.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Some(Cluster {
        dir: dir.to_path_buf(),
        api,
        hosts,
        member,
        operator_conf,
        _db: t,
    })
}

/// Segments of the project's container in Swift.
async fn swift_segments(cluster_conf: &Path) -> usize {
    let config =
        ekko::config::EkkoConfig::load(&[cluster_conf.to_path_buf()], std::iter::empty()).unwrap();
    let store = ekko::store::open(&config).unwrap();
    let project = std::env::var("EKKO_DEMO_PROJECT_ID").unwrap();
    let container = format!("{}{project}", config.swift.container_prefix);
    store.list(&container, "segments/").await.unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_jobs_reach_the_right_host_and_survive_worker_crashes() {
    let _guard = rabbit_lock();
    let dir = tempfile::tempdir().unwrap();
    let Some(mut c) = start_cluster(dir.path(), None).await else {
        return;
    };
    let wait = Duration::from_secs(120);

    // A full backup of each instance, each run by its own host.
    for (i, h) in c.hosts.iter().enumerate() {
        h.qsd.write(0, 0, &vec![0x10 + i as u8; 3 * MIB as usize]);
        h.qsd
            .write(0, 40 * MIB, &vec![0x20 + i as u8; MIB as usize]);
    }
    let mut last = Vec::new();
    for h in &c.hosts {
        let b = c.member.backup(&h.instance, "auto", wait).await;
        assert_eq!(b["status"], "available", "{b}\n{}", h.worker.log());
        assert_eq!(b["kind"], "full", "{b}");
        assert!(b["stored_bytes"].as_i64().unwrap() > 0, "{b}");
        assert!(
            h.worker.log().contains(b["id"].as_str().unwrap()),
            "the job ran on {}",
            h.name
        );
        c.assert_restores(h, b["id"].as_str().unwrap(), &format!("full-{}", h.name));
        last.push(b["id"].as_str().unwrap().to_string());
    }
    assert!(swift_segments(&c.operator_conf).await >= 2);
    let other = &c.hosts[1];
    assert!(
        !other.worker.log().contains(&last[0]),
        "host b never saw host a's job"
    );

    // An incremental reads only what changed.
    let a = &c.hosts[0];
    a.qsd.write(0, 8 * MIB, &vec![0x33; 512 * 1024]);
    let b = c.member.backup(&a.instance, "auto", wait).await;
    assert_eq!(b["status"], "available", "{b}");
    assert_eq!(b["kind"], "incremental", "{b}");
    assert!(b["read_bytes"].as_i64().unwrap() <= 2 * MIB as i64, "{b}");
    c.assert_restores(a, b["id"].as_str().unwrap(), "incr-a");

    // kill -9 of host a's worker after the data is stored, before it
    // reports: the broker redelivers the job to the restarted worker,
    // which runs it again; one backup, correct, bitmaps consistent.
    let a = &mut c.hosts[0];
    a.qsd.write(0, 20 * MIB, &vec![0x44; MIB as usize]);
    a.worker
        .restart_with(&[("EKKO_FAILPOINT", "worker.before-report")]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (s, v) = c
        .member
        .call(
            "POST",
            "/v1/backups",
            Some(json!({"backup": {"instance_id": a.instance, "name": "crashy"}})),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let crashy = v["backup"]["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + wait;
    while !a.worker.exited() {
        assert!(Instant::now() < deadline, "the failpoint never fired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.worker.restart_with(&[]);
    let b = c
        .member
        .wait_for(&crashy, &["available", "error"], wait)
        .await;
    assert_eq!(b["status"], "available", "{b}\n{}", a.worker.log());
    let a = &c.hosts[0];
    c.assert_restores(a, &crashy, "redelivered-a");
    let (_, listed) = c
        .member
        .call(
            "GET",
            &format!("/v1/backups?instance_id={}", a.instance),
            None,
        )
        .await;
    assert_eq!(
        listed["backups"].as_array().unwrap().len(),
        3,
        "exactly one backup per request: {listed}"
    );
    // The next incremental after the redelivery is still correct.
    a.qsd.write(0, 30 * MIB, &vec![0x55; MIB as usize]);
    let b = c.member.backup(&a.instance, "auto", wait).await;
    assert_eq!(b["status"], "available", "{b}");
    c.assert_restores(a, b["id"].as_str().unwrap(), "after-redelivery-a");

    // Host b's worker dies mid-job and stays down: the conductor fails the
    // job with a reason instead of leaving it running for ever.
    let bh = &mut c.hosts[1];
    bh.qsd.write(0, 10 * MIB, &vec![0x66; MIB as usize]);
    bh.worker
        .restart_with(&[("EKKO_FAILPOINT", "worker.before-report")]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (s, v) = c
        .member
        .call(
            "POST",
            "/v1/backups",
            Some(json!({"backup": {"instance_id": bh.instance}})),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let lost = v["backup"]["id"].as_str().unwrap().to_string();
    let b = c.member.wait_for(&lost, &["error"], wait).await;
    assert!(
        b["error"].as_str().unwrap().contains("stopped reporting"),
        "{b}"
    );
    // Back up: the redelivered job runs, its outcome is refused (the
    // backup already failed) and its manifest removed; the next backup of
    // host b is complete and correct.
    bh.worker.restart_with(&[]);
    let bh = &c.hosts[1];
    let deadline = Instant::now() + wait;
    while !bh.worker.log().contains("backup stored and reported") {
        assert!(Instant::now() < deadline, "{}", bh.worker.log());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bh.qsd.write(0, 50 * MIB, &vec![0x77; MIB as usize]);
    let b = c.member.backup(&bh.instance, "auto", wait).await;
    assert_eq!(b["status"], "available", "{b}\n{}", c.api.log());
    c.assert_restores(bh, b["id"].as_str().unwrap(), "after-lost-b");
}
