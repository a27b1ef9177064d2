//! Reaching the test environment: fresh databases, queues and directories.

use std::sync::{Mutex, MutexGuard, OnceLock};

use ekko::config::DatabaseOptions;
use ekko::db::Db;

/// An environment variable the test environment exports, or `None` (the
/// test is skipped) unless services are required, in which case it panics.
pub fn service_env(name: &str) -> Option<String> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            if std::env::var("EKKO_TEST_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
                panic!("{name} is not set: run the tests through tools/run-tests.sh (or source the test environment's env.sh)");
            }
            eprintln!(
                "skipping: {name} is not set (start tools/test-env.sh and source its env.sh)"
            );
            None
        }
    }
}

/// A TCP port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn db_options(connection: String) -> DatabaseOptions {
    DatabaseOptions {
        connection,
        max_retries: 3,
        retry_interval: 1,
        ..DatabaseOptions::default()
    }
}

/// A database that is dropped with the test.
pub struct TestDb {
    pub db: Db,
    pub url: String,
    cleanup: Option<(mysql_admin::Admin, String)>,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((admin, name)) = self.cleanup.take() {
            admin.drop_database(&name);
        }
    }
}

/// A fresh, empty SQLite database in a temporary directory.
pub fn sqlite_db() -> TestDb {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite:///{}/ekko.sqlite", dir.path().display());
    let db = Db::open(&db_options(url.clone())).expect("open sqlite");
    TestDb {
        db,
        url,
        cleanup: None,
        _dir: Some(dir),
    }
}

/// A fresh, empty database on the test environment's MariaDB.
pub fn mariadb_db() -> Option<TestDb> {
    let server = service_env("EKKO_DATABASE_URL")?;
    let admin = mysql_admin::Admin::new(&server);
    let name = format!(
        "ekko_test_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    admin.create_database(&name);
    let url = admin.url_for(&name);
    let db = Db::open(&db_options(url.clone())).expect("open mariadb");
    Some(TestDb {
        db,
        url,
        cleanup: Some((admin, name)),
        _dir: None,
    })
}

/// Creating and dropping per-test databases through diesel's MySQL driver.
pub mod mysql_admin {
    use diesel::connection::SimpleConnection;
    use diesel::{Connection, MysqlConnection};

    pub struct Admin {
        server: url::Url,
    }

    impl Admin {
        pub fn new(database_url: &str) -> Admin {
            let server = url::Url::parse(database_url).expect("EKKO_DATABASE_URL is a URL");
            Admin { server }
        }

        fn connect(&self) -> MysqlConnection {
            MysqlConnection::establish(self.server.as_str()).expect("connect to MariaDB")
        }

        pub fn create_database(&self, name: &str) {
            self.connect()
                .batch_execute(&format!(
                    "CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
                ))
                .expect("create database");
        }

        pub fn drop_database(&self, name: &str) {
            if let Ok(mut c) = MysqlConnection::establish(self.server.as_str()) {
                let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS `{name}`"));
            }
        }

        /// An OpenStack-style URL for database `name` on the same server.
        pub fn url_for(&self, name: &str) -> String {
            let mut u = self.server.clone();
            u.set_path(&format!("/{name}"));
            format!("mysql+pymysql{}", &u.as_str()["mysql".len()..])
        }
    }
}

/// Tests that restart or reconfigure a shared service take this lock, and
/// every test that uses that service takes it too.
pub fn rabbit_lock() -> MutexGuard<'static, ()> {
    static LOCK: OnceLock<Mutex<()>> = OnceLock::new();
    LOCK.get_or_init(|| Mutex::new(()))
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// Tests that restart the test environment's libvirtd take this lock, and
/// every test that uses libvirtd takes it too (an async lock: it is held
/// across the test's awaits).
pub async fn libvirt_lock() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// The test environment's Keystone and service user as a `[keystone_authtoken]`
/// section, or `None` (skip) when the environment is not there.
pub fn keystone_section() -> Option<String> {
    let auth_url = service_env("EKKO_KEYSTONE_AUTH_URL")?;
    Some(format!(
        "[keystone_authtoken]\nauth_url = {auth_url}\nusername = {}\npassword = {}\nproject_name = {}\n\
         region_name = RegionOne\ninterface = internal\n",
        service_env("EKKO_SERVICE_USERNAME")?,
        service_env("EKKO_SERVICE_PASSWORD")?,
        service_env("EKKO_SERVICE_PROJECT")?,
    ))
}

/// A configuration for the Swift store of the test environment (`extra` is
/// appended, e.g. a `[swift]` section), loaded like a service loads it.
pub fn swift_config(dir: &std::path::Path, extra: &str) -> Option<ekko::config::EkkoConfig> {
    let conf = dir.join("swift.conf");
    std::fs::write(
        &conf,
        format!(
            "[DEFAULT]\nstate_path = {}\n[storage]\nbackend = swift\n{}{extra}",
            dir.join("state").display(),
            keystone_section()?
        ),
    )
    .expect("write swift.conf");
    Some(
        ekko::config::EkkoConfig::load(&[conf], std::iter::empty())
            .expect("a valid swift configuration"),
    )
}

/// A configuration for the S3 store of the test environment (Swift's s3api
/// with the ekko user's EC2 credentials); `endpoint` replaces the
/// environment's (a proxy in front of it), `extra` lines go in `[s3]`.
pub fn s3_config(
    dir: &std::path::Path,
    endpoint: Option<String>,
    extra: &str,
) -> Option<ekko::config::EkkoConfig> {
    let endpoint = match endpoint {
        Some(e) => e,
        None => service_env("EKKO_S3_ENDPOINT")?,
    };
    let conf = dir.join("s3.conf");
    std::fs::write(
        &conf,
        format!(
            "[DEFAULT]\nstate_path = {}\n[storage]\nbackend = s3\n[s3]\nendpoint = {endpoint}\n\
             region = {}\naccess_key = {}\nsecret_key = {}\n{extra}",
            dir.join("state").display(),
            std::env::var("EKKO_S3_REGION").unwrap_or_else(|_| "us-east-1".into()),
            service_env("EKKO_S3_ACCESS_KEY")?,
            service_env("EKKO_S3_SECRET_KEY")?,
        ),
    )
    .expect("write s3.conf");
    Some(
        ekko::config::EkkoConfig::load(&[conf], std::iter::empty())
            .expect("a valid s3 configuration"),
    )
}

/// What [`faulty_proxy_with`] does to every n-th request (0: never).
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Answer `503` instead of forwarding.
    pub fail_every: u64,
    /// Forward, then relay only the first half of the answer and close.
    pub truncate_every: u64,
    /// Read the request and answer nothing for a minute (a client timeout).
    pub stall_every: u64,
}

/// An HTTP proxy on loopback in front of `upstream` (host:port) that answers
/// `503` to every `fail_every`-th request instead of forwarding it. Each
/// request gets its own upstream connection (`Connection: close`), so every
/// request is counted. Returns the proxy's address and the request counter.
pub async fn faulty_proxy(
    upstream: String,
    fail_every: u64,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    let faults = Faults {
        fail_every,
        ..Faults::default()
    };
    faulty_proxy_with(upstream, faults).await
}

/// [`faulty_proxy`] with more kinds of fault: 503s, truncated answers and
/// stalls, each on every n-th request.
pub async fn faulty_proxy_with(
    upstream: String,
    faults: Faults,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let every = |k: u64, n: u64| k > 0 && n % k == 0;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind proxy");
    let addr = listener.local_addr().expect("proxy address");
    let count = std::sync::Arc::new(AtomicU64::new(0));
    let counter = count.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            let upstream = upstream.clone();
            tokio::spawn(async move {
                // Read the request head.
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match client.read(&mut byte).await {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let text = String::from_utf8_lossy(&head).to_string();
                let length: usize = text
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                let mut body = vec![0u8; length];
                if client.read_exact(&mut body).await.is_err() {
                    return;
                }
                if every(faults.fail_every, n) {
                    let _ = client
                        .write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .await;
                    return;
                }
                if every(faults.stall_every, n) {
                    tokio::time::sleep(std::time::Duration::from_secs(60)).await;
                    return;
                }
                // Forward with Connection: close, then relay the answer.
                let mut lines: Vec<&str> = text
                    .trim_end()
                    .split("\r\n")
                    .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
                    .collect();
                lines.push("Connection: close");
                let Ok(mut up) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let request = format!("{}\r\n\r\n", lines.join("\r\n"));
                if up.write_all(request.as_bytes()).await.is_err()
                    || up.write_all(&body).await.is_err()
                {
                    return;
                }
                if every(faults.truncate_every, n) {
                    let mut answer = Vec::new();
                    let _ = up.read_to_end(&mut answer).await;
                    let _ = client.write_all(&answer[..answer.len() / 2]).await;
                } else {
                    let _ = tokio::io::copy(&mut up, &mut client).await;
                }
                let _ = client.shutdown().await;
            });
        }
    });
    (addr, count)
}

fn rabbitmqctl_path() -> String {
    std::env::var("EKKO_RABBITMQCTL").unwrap_or_else(|_| {
        format!(
            "{}/bin/rabbitmqctl",
            std::env::var("EKKO_OS_STATE").unwrap_or_else(|_| "/var/lib/ekko-openstack".into())
        )
    })
}

/// Run the test environment's `rabbitmqctl`.
pub fn rabbitmqctl(args: &[&str]) {
    let ctl = rabbitmqctl_path();
    let status = std::process::Command::new(&ctl)
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("{ctl}: {e}"));
    assert!(status.success(), "{ctl} {args:?} failed");
}

/// Run the test environment's `rabbitmqctl`; what it printed.
pub fn rabbitmqctl_output(args: &[&str]) -> String {
    let ctl = rabbitmqctl_path();
    let out = std::process::Command::new(&ctl)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{ctl}: {e}"));
    assert!(out.status.success(), "{ctl} {args:?} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stop the test environment's MariaDB (SIGTERM, as a service manager
/// would) and wait until it is gone. Only for tests that run alone.
#[allow(dead_code)] // used by the restarts binary only
pub fn mariadb_stop() {
    let state = std::env::var("EKKO_OS_STATE").unwrap_or_else(|_| "/var/lib/ekko-openstack".into());
    let pid_file = format!("{state}/run/mariadb.pid");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap_or_else(|e| panic!("{pid_file}: {e}"))
        .trim()
        .parse()
        .expect("a pid");
    // SAFETY: sending a signal has no memory-safety effect.
    assert_eq!(
        unsafe { libc::kill(pid, libc::SIGTERM) },
        0,
        "kill mariadbd"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "mariadbd did not stop"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Start whatever of the test environment is not running (the project's
/// own idempotent script).
#[allow(dead_code)] // used by the restarts binary only
pub fn services_start() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/test-env.sh");
    let status = std::process::Command::new("bash")
        .arg(script)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("bash");
    assert!(status.success(), "{script} failed");
}

/// A project-scoped token from the test environment's Keystone for the user
/// and password named by environment variables, with the user's id.
pub async fn keystone_token(user_var: &str, password_var: &str, project: &str) -> (String, String) {
    let auth_url = std::env::var("EKKO_KEYSTONE_AUTH_URL").expect("EKKO_KEYSTONE_AUTH_URL");
    let body = serde_json::json!({"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": std::env::var(user_var).expect("user"),
            "domain": {"name": "Default"},
            "password": std::env::var(password_var).expect("password"),
        }}},
        "scope": {"project": {"name": project, "domain": {"name": "Default"}}},
    }});
    let resp = reqwest::Client::new()
        .post(format!("{auth_url}/auth/tokens?nocatalog"))
        .json(&body)
        .send()
        .await
        .expect("Keystone answers");
    assert!(
        resp.status().is_success(),
        "token for {user_var}: {}",
        resp.status()
    );
    let token = resp.headers()["X-Subject-Token"]
        .to_str()
        .expect("a token")
        .to_string();
    let body: serde_json::Value = resp.json().await.expect("a token body");
    let user = body["token"]["user"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    (token, user)
}
