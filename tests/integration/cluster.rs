//! A whole Ekko deployment on loopback for the distributed tests: ekko-api
//! (with its conductor) on MariaDB and Keystone, two ekko-backup processes
//! acting as two compute hosts (each with a qemu-storage-daemon as its
//! instance, no database credentials), RabbitMQ between them and Swift for
//! the data.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{free_port, keystone_section, mariadb_db, service_env};
use crate::qsd::{identical, Qsd};

pub const MIB: u64 = 1 << 20;

/// What kolla-ansible writes into every service's `[DEFAULT]` that is
/// oslo.log's or oslo.service's, not Ekko's.
pub const KOLLA_DEFAULT: &str = "use_stderr = False\nsyslog_log_facility = LOG_LOCAL0\n\
    graceful_shutdown_timeout = 60\n";
/// keystonemiddleware's keys kolla-ansible writes (appended to a
/// `[keystone_authtoken]` section), and sections of other libraries.
pub const KOLLA_AUTHTOKEN: &str = "service_type = instance-backup\n\
    memcache_security_strategy = ENCRYPT\nmemcache_secret_key = kolla-secret\n\
    memcached_servers = 127.0.0.1:11211\nservice_token_roles_required = True\n\
    [oslo_messaging_notifications]\ndriver = noop\n\
    [oslo_middleware]\nenable_proxy_headers_parsing = True\n";

/// A service process, killed with the test.
pub struct Service {
    name: String,
    child: Option<Child>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
}

impl Service {
    pub fn start(bin: &str, conf: &Path, log: PathBuf, env: &[(&str, &str)]) -> Service {
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
            "ekko-retention" => env!("CARGO_BIN_EXE_ekko-retention"),
            _ => env!("CARGO_BIN_EXE_ekko-backup"),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(bin);
        for (k, _) in std::env::vars() {
            if k.starts_with("EKKO__") || k == "EKKO_FAILPOINT" || k == "EKKO_FAIL_ONCE" {
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

    pub fn restart_with(&mut self, env: &[(&str, &str)]) {
        self.kill9();
        self.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.spawn();
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait; whether it exited successfully.
    pub fn terminate(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        // SAFETY: sending a signal has no memory-safety effect.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        c.wait().is_ok_and(|s| s.success())
    }

    /// Whether the process exited by itself (e.g. killed by a failpoint).
    pub fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_some())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub async fn token(user: &str, password: &str, project: &str) -> String {
    crate::helpers::keystone_token(user, password, project)
        .await
        .0
}

pub struct Client {
    http: reqwest::Client,
    pub base: String,
    token: String,
}

impl Client {
    pub fn new(base: &str, token: String) -> Client {
        Client {
            http: reqwest::Client::new(),
            base: base.to_string(),
            token,
        }
    }

    /// POST a backup of `instance`; its id and the API's request id.
    pub async fn start_backup_traced(&self, instance: &str, mode: &str) -> (String, String) {
        let r = self
            .http
            .post(format!("{}/v1/backups", self.base))
            .header("X-Auth-Token", &self.token)
            .json(&json!({"backup": {"instance_id": instance, "mode": mode}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 202);
        let request_id = r.headers()["x-openstack-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        let v: Value = r.json().await.unwrap();
        (v["backup"]["id"].as_str().unwrap().to_string(), request_id)
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
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

    /// Ask for a backup of `instance` (202); its id.
    pub async fn start_backup(&self, instance: &str, mode: &str) -> String {
        let (s, v) = self
            .call(
                "POST",
                "/v1/backups",
                Some(json!({"backup": {"instance_id": instance, "mode": mode}})),
            )
            .await;
        assert_eq!(s, 202, "{v}");
        v["backup"]["id"].as_str().unwrap().to_string()
    }

    /// Ask for a backup of `instance` and wait until it ends; returns the
    /// final backup body.
    pub async fn backup(&self, instance: &str, mode: &str, wait: Duration) -> Value {
        let id = self.start_backup(instance, mode).await;
        self.wait_for(&id, &["available", "error"], wait).await
    }

    /// The backups of `instance` the caller sees.
    pub async fn backups_of(&self, instance: &str) -> Vec<Value> {
        let (s, v) = self
            .call("GET", &format!("/v1/backups?instance_id={instance}"), None)
            .await;
        assert_eq!(s, 200, "{v}");
        v["backups"].as_array().cloned().unwrap_or_default()
    }

    pub async fn wait_for(&self, id: &str, states: &[&str], wait: Duration) -> Value {
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
pub struct Host {
    pub name: String,
    pub instance: String,
    pub qsd: Qsd,
    pub worker: Service,
}

impl Host {
    /// Restart the worker so that it kills itself (as kill -9) once its
    /// next backup is stored, before it reports.
    pub async fn crash_before_next_report(&mut self) {
        self.worker
            .restart_with(&[("EKKO_FAILPOINT", "worker.before-report")]);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

pub struct Cluster {
    pub dir: PathBuf,
    pub api: Service,
    pub hosts: Vec<Host>,
    pub member: Client,
    pub admin: Client,
    /// Config for the operator CLI on the same catalog and store.
    pub operator_conf: PathBuf,
    /// Encryption in public-key mode: host a is the restore side (master
    /// key and host key), host b holds the host key only.
    pub public_key: bool,
    pub exchange: String,
    /// Each host's own bus URL (its user).
    pub bus_urls: Vec<String>,
    /// ekko-api's metrics listener (`http://…`).
    pub api_metrics: String,
    _bus_users: BusUsers,
    _db: crate::helpers::TestDb,
}

impl Cluster {
    /// Restore `backup` through the API (as admin) to a file on the host
    /// of host `i`, and compare it with that host's disk as it is now.
    pub async fn assert_api_restores(&self, i: usize, backup: &str, tag: &str) {
        let (s, v) = self
            .admin
            .call(
                "POST",
                "/v1/restores",
                Some(json!({"restore": {"backup_id": backup, "target": {"type": "file", "path": format!("{tag}.raw")}}})),
            )
            .await;
        assert_eq!(s, 202, "{v}");
        let id = v["restore"]["id"].as_str().unwrap().to_string();
        let deadline = Instant::now() + Duration::from_secs(120);
        let done = loop {
            let (s, v) = self
                .admin
                .call("GET", &format!("/v1/restores/{id}"), None)
                .await;
            let status = v["restore"]["status"].as_str().unwrap_or("").to_string();
            if s == 200 && (status == "completed" || status == "error") {
                break v["restore"].clone();
            }
            assert!(Instant::now() < deadline, "restore {id}: {v}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        assert_eq!(done["status"], "completed", "{done}");
        // In public-key mode every restore runs on the restore side, host a.
        let name = if self.public_key { "a" } else { ["a", "b"][i] };
        let written = self.dir.join(format!("state-{name}/restores/{tag}.raw"));
        let reference = self.dir.join(format!("{tag}-api-ref.raw"));
        self.hosts[i].qsd.snapshot_to(0, &reference);
        assert!(
            identical(&reference, &written),
            "{tag}: API restore of {backup} differs from the disk"
        );
        // Zero chunks are holes, not writes.
        let wrote = done["bytes_written"].as_u64().unwrap();
        assert!(
            wrote > 0 && wrote <= std::fs::metadata(&written).unwrap().len(),
            "{done}"
        );
    }

    pub fn restore_cli(&self, backup: &str, out: &Path) {
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
    pub fn assert_restores(&self, host: &Host, backup: &str, tag: &str) {
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

/// The `[encryption]` sections of a public-key cluster: the controller's
/// (the master key, one host key per host in a directory, host a as the
/// restore side), and each host's: host a (the restore side) the master key
/// and its own host key, host b only its own host key.
fn public_key_sections(dir: &Path, hosts: [&str; 2]) -> (String, [String; 2]) {
    use std::os::unix::fs::PermissionsExt;
    let key = |path: std::path::PathBuf| {
        std::fs::write(&path, ekko::crypto::MasterKey::generate_hex().unwrap()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path.display().to_string()
    };
    let host_keys = dir.join("host-keys");
    std::fs::create_dir_all(&host_keys).unwrap();
    let master = key(dir.join("master.key"));
    let [a, b] = hosts.map(|h| key(host_keys.join(format!("{h}.key"))));
    let section = "[encryption]\nenabled = true\nmode = public_key\n";
    (
        format!(
            "{section}master_key_file = {master}\nhost_keys_dir = {}\nrestore_host = {}\n",
            host_keys.display(),
            hosts[0]
        ),
        [
            format!("{section}master_key_file = {master}\nhost_key_file = {a}\n"),
            format!("{section}host_key_file = {b}\n"),
        ],
    )
}

pub async fn start_cluster(
    dir: &Path,
    swift_proxy: Option<String>,
    public_key: bool,
) -> Option<Cluster> {
    start_cluster_with(dir, swift_proxy, public_key, ["", ""]).await
}

/// [`start_cluster`] with more configuration for host a and host b.
pub async fn start_cluster_with(
    dir: &Path,
    swift_proxy: Option<String>,
    public_key: bool,
    host_extra: [&str; 2],
) -> Option<Cluster> {
    start_cluster_full(dir, swift_proxy, public_key, host_extra, "").await
}

/// [`start_cluster_with`], and `extra` in every process's configuration
/// (the controller's, the operator's and both hosts').
pub async fn start_cluster_full(
    dir: &Path,
    swift_proxy: Option<String>,
    public_key: bool,
    host_extra: [&str; 2],
    extra: &str,
) -> Option<Cluster> {
    ekko::cli::install_crypto_provider();
    let amqp = service_env("EKKO_AMQP_URL")?;
    let keystone = keystone_section()?;
    let demo_project = service_env("EKKO_DEMO_PROJECT_ID")?;
    let t = mariadb_db()?;
    t.db.sync().unwrap();
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let exchange = format!("ekko-test-{tag}");
    // `default` goes into [DEFAULT], `swift` into [swift]. Every file also
    // has what kolla-ansible writes for every service (other libraries'
    // keys), which the daemons ignore with a warning.
    let common = |state: &str, default: &str, swift: &str| {
        format!(
            "[DEFAULT]\ntransport_url = {amqp}\ncontrol_exchange = {exchange}\nstate_path = {}\n{default}{}\
             [storage]\nbackend = swift\n[swift]\ncontainer_prefix = ekko-{tag}-\n{swift}{keystone}{}{extra}",
            dir.join(state).display(),
            KOLLA_DEFAULT,
            KOLLA_AUTHTOKEN,
        )
    };
    let (controller_keys, host_keys) = if public_key {
        public_key_sections(dir, [&format!("host-a-{tag}"), &format!("host-b-{tag}")])
    } else {
        Default::default()
    };
    // Each host gets a bus user of its own (ekko-host-<host>), allowed only
    // its own queues and the status routing keys; the conductor takes a
    // report only from the user of the host it names.
    let hosts_named: Vec<String> = ["a", "b"]
        .iter()
        .map(|n| format!("host-{n}-{tag}"))
        .collect();
    let mut bus_users = Vec::new();
    let mut host_urls = Vec::new();
    for host in &hosts_named {
        let (user, url) = host_bus_user(&amqp, &exchange, host);
        bus_users.push(user);
        host_urls.push(url);
    }
    let api_port = free_port();
    let metrics_port = free_port();
    let api_conf = dir.join("api.conf");
    std::fs::write(
        &api_conf,
        format!(
            "{}[database]\nconnection = {}\n[api]\nbind_host = 127.0.0.1\nbind_port = {api_port}\n\
             [metrics]\napi_listen = 127.0.0.1:{metrics_port}\n\
             [backup]\njob_stall_timeout = 20\nhost_bus_users = true\n{controller_keys}",
            common("api", "", ""),
            t.url
        ),
    )
    .unwrap();
    let operator_conf = dir.join("operator.conf");
    std::fs::write(
        &operator_conf,
        format!(
            "{}[database]\nconnection = {}\n{controller_keys}",
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
                "{}[backup]\nheartbeat_interval = 1\ndiscovery_dir = {}\nshutdown_timeout = 3\n{}{}{}",
                common(
                    &format!("state-{name}"),
                    &format!("host = {host}\n"),
                    &swift
                )
                .replace(&amqp, &host_urls[i]),
                discovery.display(),
                // Host b reads slowly, so a test can catch a job mid-way.
                if i == 1 { "read_rate_limit = 4M\n" } else { "" },
                // Host a is the restore side; host b can only write.
                &host_keys[i],
                host_extra[i]
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
    let admin = Client {
        http: reqwest::Client::new(),
        base: member.base.clone(),
        token: token("OS_USERNAME", "OS_PASSWORD", "admin").await,
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
        admin,
        operator_conf,
        public_key,
        exchange,
        bus_urls: host_urls,
        api_metrics: format!("http://127.0.0.1:{metrics_port}"),
        _bus_users: BusUsers(bus_users),
        _db: t,
    })
}

/// Create `ekko-host-<host>` on the test broker with the permissions a
/// deployment gives a compute host (README, "Message bus users"): it may
/// declare and read only its own queues, publish only `status.*`, bind
/// only its own job and control keys. Returns the user and its URL.
pub fn host_bus_user(amqp: &str, exchange: &str, host: &str) -> (String, String) {
    use crate::helpers::rabbitmqctl;
    let user = format!("ekko-host-{host}");
    let password = uuid::Uuid::new_v4().simple().to_string();
    let (ex, h) = (exchange.replace('.', "\\."), host.replace('.', "\\."));
    let own = format!("^{ex}\\.(backup|control)\\.{h}$");
    let own_or_exchange = format!("^({ex}|{ex}\\.(backup|control)\\.{h})$");
    rabbitmqctl(&["add_user", &user, &password]);
    rabbitmqctl(&[
        "set_permissions",
        "-p",
        "/",
        &user,
        &own,
        &own_or_exchange,
        &own_or_exchange,
    ]);
    rabbitmqctl(&[
        "set_topic_permissions",
        "-p",
        "/",
        &user,
        exchange,
        "^status\\.",
        &format!("^(backup|control)\\.{h}$"),
    ]);
    let mut url = url::Url::parse(amqp).expect("EKKO_AMQP_URL");
    url.set_username(&user).expect("a user");
    url.set_password(Some(&password)).expect("a password");
    (user, url.to_string())
}

/// The test's bus users, removed at the end.
pub struct BusUsers(Vec<String>);

impl BusUsers {
    pub fn new(users: Vec<String>) -> BusUsers {
        BusUsers(users)
    }
}

impl Drop for BusUsers {
    fn drop(&mut self) {
        for u in &self.0 {
            crate::helpers::rabbitmqctl(&["delete_user", u]);
        }
    }
}

/// Segments of the project's container in Swift.
pub async fn swift_segments(cluster_conf: &Path) -> usize {
    let config =
        ekko::config::EkkoConfig::load(&[cluster_conf.to_path_buf()], std::iter::empty()).unwrap();
    let store = ekko::store::open(&config).unwrap();
    let project = std::env::var("EKKO_DEMO_PROJECT_ID").unwrap();
    let container = format!("{}{project}", config.swift.container_prefix);
    store.list(&container, "segments/").await.unwrap().len()
}

/// The broker holds host a's bus user to its own keys and queues: a job
/// published to host b, a message claiming another user, or host a's
/// queue bound to the status keys are all refused by RabbitMQ itself.
pub async fn assert_bus_refuses_host_a(c: &Cluster) {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions};
    use lapin::types::FieldTable;
    use lapin::{BasicProperties, Connection, ConnectionProperties};
    let (url, ex) = (&c.bus_urls[0], c.exchange.as_str());
    let (own, other) = (&c.hosts[0].name, &c.hosts[1].name);
    let channel = || async {
        let conn = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("host a's user connects");
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        (conn, ch)
    };
    let publish = |key: String, props: BasicProperties| async move {
        let (_conn, ch) = channel().await;
        match ch
            .basic_publish(
                ex.into(),
                key.as_str().into(),
                BasicPublishOptions::default(),
                b"{}",
                props,
            )
            .await
        {
            Err(_) => false,
            Ok(confirm) => match confirm.await {
                Ok(c) => c.is_ack() && ch.status().connected(),
                Err(_) => false,
            },
        }
    };
    assert!(
        publish("status.host.heartbeat".into(), BasicProperties::default()).await,
        "host a may report"
    );
    assert!(
        !publish(format!("backup.{other}"), BasicProperties::default()).await,
        "host a may not send host b a job"
    );
    assert!(
        !publish(
            "status.job.started".into(),
            BasicProperties::default().with_user_id(format!("ekko-host-{other}").as_str().into())
        )
        .await,
        "host a may not speak as host b's user"
    );
    let (_conn, ch) = channel().await;
    let bound = ch
        .queue_bind(
            format!("{ex}.backup.{own}").as_str().into(),
            ex.into(),
            "status.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert!(bound.is_err(), "host a may not read the status keys");
}
