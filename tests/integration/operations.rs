//! Operating Ekko as an OpenStack service (issue 21): `/healthcheck` with
//! the catalog up and down, configuration files as deployment tools write
//! them, against the real Keystone, MariaDB, RabbitMQ and Swift.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cluster::{start_cluster_with, token, Service, KOLLA_AUTHTOKEN, KOLLA_DEFAULT, MIB};
use crate::helpers::{free_port, keystone_section, mariadb_db, mysql_admin, service_env};

async fn wait_until_listening(base: &str, api: &Service) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::get(format!("{base}/")).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "ekko-api did not start: {}",
            api.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn health(base: &str, token: Option<&str>) -> (u16, String) {
    let mut req = reqwest::Client::new().get(format!("{base}/healthcheck"));
    if let Some(t) = token {
        req = req.header("X-Auth-Token", t);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn check<'a>(detail: &'a Value, name: &str) -> &'a Value {
    detail["checks"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no {name} check in {detail}"))
}

fn write_conf(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_drains_by_file_and_details_the_catalog_down_and_up() {
    ekko::cli::install_crypto_provider();
    let (Some(amqp), Some(keystone), Some(server)) = (
        service_env("EKKO_AMQP_URL"),
        keystone_section(),
        service_env("EKKO_DATABASE_URL"),
    ) else {
        return;
    };
    let Some(t) = mariadb_db() else { return };
    t.db.sync().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let drain = dir.path().join("drain");
    let port = free_port();
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let conf = write_conf(
        dir.path(),
        "api.conf",
        &format!(
            "[DEFAULT]\ntransport_url = {amqp}\ncontrol_exchange = ekko-test-{tag}\nstate_path = {}\n{KOLLA_DEFAULT}\
             [database]\nconnection = {}\n[api]\nbind_host = 127.0.0.1\nbind_port = {port}\n\
             [storage]\nbackend = swift\n[swift]\ncontainer_prefix = ekko-{tag}-\n\
             [healthcheck]\ndisable_by_file_path = {}\n{keystone}{KOLLA_AUTHTOKEN}",
            dir.path().join("state").display(),
            t.url,
            drain.display(),
        ),
    );
    let api = Service::start("ekko-api", &conf, dir.path().join("api.log"), &[]);
    let base = format!("http://127.0.0.1:{port}");
    wait_until_listening(&base, &api).await;
    // The foreign keys were read and noted, not refused.
    assert!(
        api.log().contains("memcache_secret_key ignored"),
        "{}",
        api.log()
    );

    // No token: OK in text; HEAD too, without a body.
    assert_eq!(health(&base, None).await, (200, "OK".to_string()));
    let head = reqwest::Client::new()
        .head(format!("{base}/healthcheck"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status().as_u16(), 200);
    // A bad token is not a 401 here: just the plain answer.
    assert_eq!(health(&base, Some("not-a-token")).await, (200, "OK".into()));
    // A member sees only OK; an admin sees every check.
    let member = token("EKKO_DEMO_USERNAME", "EKKO_DEMO_PASSWORD", "demo").await;
    let admin = token("OS_USERNAME", "OS_PASSWORD", "admin").await;
    assert_eq!(health(&base, Some(&member)).await, (200, "OK".into()));
    let (s, body) = health(&base, Some(&admin)).await;
    assert_eq!(s, 200, "{body}");
    let detail: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(detail["status"], "OK", "{detail}");
    for name in ["catalog", "message_bus", "object_store"] {
        assert_eq!(check(&detail, name)["ok"], true, "{detail}");
    }
    assert!(!body.contains(&service_env("EKKO_SERVICE_PASSWORD").unwrap()));

    // The file sets enable_proxy_headers_parsing (as kolla does): links
    // follow the proxy's scheme, host and path prefix.
    let v: Value = reqwest::Client::new()
        .get(format!("{base}/"))
        .header("X-Forwarded-Proto", "https")
        .header("X-Forwarded-Host", "cloud.example")
        .header("X-Forwarded-Prefix", "/instance-backup")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["versions"][0]["links"][0]["href"], "https://cloud.example/instance-backup/v1/",
        "{v}"
    );

    // Drained by file: 503 for everyone, back once the file is gone.
    std::fs::write(&drain, "").unwrap();
    assert_eq!(health(&base, None).await, (503, "DISABLED BY FILE".into()));
    assert_eq!(health(&base, Some(&admin)).await.0, 503);
    std::fs::remove_file(&drain).unwrap();
    assert_eq!(health(&base, None).await.0, 200);

    // The catalog goes away: the plain answer stays OK (the process serves;
    // a load balancer gains nothing by draining every node of a shared
    // catalog), the detailed one is 503 and names the catalog.
    let name = t.url.rsplit('/').next().unwrap().to_string();
    let admin_db = mysql_admin::Admin::new(&server);
    admin_db.drop_database(&name);
    assert_eq!(health(&base, None).await, (200, "OK".into()));
    let (s, body) = health(&base, Some(&admin)).await;
    assert_eq!(s, 503, "{body}");
    let detail: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(detail["status"], "FAILED");
    assert_eq!(check(&detail, "catalog")["ok"], false, "{detail}");
    assert_eq!(check(&detail, "message_bus")["ok"], true, "{detail}");
    assert_eq!(check(&detail, "object_store")["ok"], true, "{detail}");

    // And comes back.
    admin_db.create_database(&name);
    t.db.sync().unwrap();
    let (s, body) = health(&base, Some(&admin)).await;
    assert_eq!(s, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kolla_style_file_starts_retention_and_fails_the_strict_check() {
    ekko::cli::install_crypto_provider();
    let (Some(amqp), Some(keystone)) = (service_env("EKKO_AMQP_URL"), keystone_section()) else {
        return;
    };
    let Some(t) = mariadb_db() else { return };
    t.db.sync().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let conf = write_conf(
        dir.path(),
        "ekko.conf",
        &format!(
            "[DEFAULT]\ntransport_url = {amqp}\ncontrol_exchange = ekko-test-{tag}\nstate_path = {}\n{KOLLA_DEFAULT}\
             [database]\nconnection = {}\n[storage]\nbackend = swift\n[swift]\ncontainer_prefix = ekko-{tag}-\n\
             {keystone}{KOLLA_AUTHTOKEN}",
            dir.path().join("state").display(),
            t.url,
        ),
    );
    let mut retention = Service::start(
        "ekko-retention",
        &conf,
        dir.path().join("retention.log"),
        &[],
    );
    // It connects and runs a pass (the pass logs when it is done).
    let deadline = Instant::now() + Duration::from_secs(60);
    let passed = |log: String| {
        log.lines()
            .any(|l| l.contains("INFO") && l.contains("retention pass"))
    };
    while !passed(retention.log()) {
        assert!(
            !retention.exited(),
            "ekko-retention exited: {}",
            retention.log()
        );
        assert!(Instant::now() < deadline, "no pass: {}", retention.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        retention.log().contains("use_stderr ignored"),
        "{}",
        retention.log()
    );
    assert!(retention.terminate(), "{}", retention.log());

    let manage = |strict: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ekko-manage"));
        c.args(["--config-file", conf.to_str().unwrap(), "config", "check"]);
        if strict {
            c.arg("--strict");
        }
        c.output().unwrap()
    };
    let out = manage(false);
    assert!(out.status.success(), "{out:?}");
    let out = manage(true);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("use_stderr"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ekko_status_upgrade_check_exit_codes() {
    let Some(t) = mariadb_db() else { return };
    let dir = tempfile::tempdir().unwrap();
    let base = format!(
        "[DEFAULT]\nstate_path = {}\n[database]\nconnection = {}\n",
        dir.path().join("state").display(),
        t.url
    );
    let status = |conf: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_ekko-status"))
            .args(["--config-file", conf.to_str().unwrap(), "upgrade", "check"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.code(), text)
    };
    let clean = write_conf(dir.path(), "clean.conf", &base);

    // A catalog never synced: the schema check fails.
    let (code, text) = status(&clean);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("Check: Database schema") && text.contains("ekko-manage db sync"),
        "{text}"
    );

    t.db.sync().unwrap();
    let (code, text) = status(&clean);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("Upgrade Check Results"), "{text}");

    // Keys of other libraries: a warning that names them.
    let kolla = write_conf(
        dir.path(),
        "kolla.conf",
        &format!("{base}[DEFAULT]\n{KOLLA_DEFAULT}"),
    );
    let (code, text) = status(&kolla);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("use_stderr ignored"), "{text}");

    // A compute host still on an older release: a warning naming it.
    ekko::db::hosts::heartbeat(&mut t.db.conn().unwrap(), "compute-old", "0.0.1", 1).unwrap();
    let (code, text) = status(&clean);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("compute-old runs 0.0.1"), "{text}");

    // An unreadable master key file: a failure.
    let missing = write_conf(
        dir.path(),
        "keys.conf",
        &format!(
            "{base}[encryption]\nmaster_key_file = {}\n",
            dir.path().join("nope.key").display()
        ),
    );
    let (code, text) = status(&missing);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("nope.key"), "{text}");

    // A configuration that does not load: a failure, not a crash.
    let bad = write_conf(
        dir.path(),
        "bad.conf",
        &format!("{base}[api]\nbind_port = many\n"),
    );
    let (code, text) = status(&bad);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("bind_port"), "{text}");
}

/// The value of one series in a Prometheus text exposition.
fn series(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(name)?
            .strip_prefix(' ')?
            .split(' ')
            .next()?
            .parse()
            .ok()
    })
}

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_daemons_metrics_show_a_distributed_backup() {
    let dir = tempfile::tempdir().unwrap();
    let host_port = free_port();
    let host_extra =
        format!("[metrics]\nbackup_listen = 127.0.0.1:{host_port}\nhealth_details = true\n");
    let Some(c) = start_cluster_with(dir.path(), None, false, [&host_extra, ""]).await else {
        return;
    };
    // ekko-retention on the same catalog, bus and store.
    let retention_port = free_port();
    let conf = dir.path().join("retention.conf");
    std::fs::write(
        &conf,
        format!(
            "{}[metrics]\nretention_listen = 127.0.0.1:{retention_port}\nhealth_details = true\n[retention]\ninterval = 1\n",
            std::fs::read_to_string(&c.operator_conf).unwrap()
        ),
    )
    .unwrap();
    let retention = Service::start(
        "ekko-retention",
        &conf,
        dir.path().join("retention.log"),
        &[],
    );

    let a = &c.hosts[0];
    a.qsd.write(0, 0, &vec![0x5a; 3 * MIB as usize]);
    let (id, request_id) = c.member.start_backup_traced(&a.instance, "full").await;
    let b = c
        .member
        .wait_for(&id, &["available", "error"], Duration::from_secs(120))
        .await;
    assert_eq!(b["status"], "available", "{b}");
    // One request id finds the backup's lines on the API (the request),
    // the conductor (the host's reports) and the compute host (the job).
    let api_log = c.api.log();
    let on_api = api_log
        .lines()
        .filter(|l| l.contains(&request_id))
        .collect::<Vec<_>>();
    assert!(on_api.iter().any(|l| l.contains("request{")), "{api_log}");
    assert!(
        on_api
            .iter()
            .any(|l| l.contains("report{") && l.contains("backup committed")),
        "{api_log}"
    );
    let host_log = a.worker.log();
    assert!(
        host_log
            .lines()
            .any(|l| l.contains(&request_id) && l.contains("job{") && l.contains("backup started")),
        "{host_log}"
    );

    // The compute host: the backup's bytes and how long it ran.
    let (s, host) = get(&format!("http://127.0.0.1:{host_port}/metrics")).await;
    assert_eq!(s, 200);
    assert_eq!(
        series(&host, "ekko_backup_bytes_total{stage=\"scanned\"}"),
        Some((64 * MIB) as f64),
        "{host}"
    );
    for stage in ["read", "new", "stored"] {
        let name = format!("ekko_backup_bytes_total{{stage=\"{stage}\"}}");
        assert!(
            series(&host, &name) >= b[format!("{stage}_bytes")].as_f64(),
            "{host}\n{b}"
        );
        assert!(series(&host, &name) > Some(0.0), "{host}");
    }
    assert_eq!(
        series(
            &host,
            "ekko_job_duration_seconds_count{kind=\"backup\",outcome=\"stored\"}"
        ),
        Some(1.0),
        "{host}"
    );
    // The conductor: what it committed, the catalog's gauges, requests.
    let (s, api) = get(&format!("{}/metrics", c.api_metrics)).await;
    assert_eq!(s, 200);
    assert_eq!(
        series(&api, "ekko_backup_bytes_total{stage=\"scanned\"}"),
        Some((64 * MIB) as f64),
        "{api}"
    );
    assert_eq!(
        series(&api, "ekko_backup_bytes_total{stage=\"stored\"}"),
        b["stored_bytes"].as_f64(),
        "{api}\n{b}"
    );
    assert_eq!(
        series(
            &api,
            "ekko_backup_commit_duration_seconds_count{kind=\"full\"}"
        ),
        Some(1.0),
        "{api}"
    );
    assert_eq!(
        series(&api, "ekko_backups{status=\"available\"}"),
        Some(1.0),
        "{api}"
    );
    assert!(
        series(
            &api,
            "ekko_api_requests_total{method=\"POST\",route=\"/v1/backups\",status=\"202\"}"
        ) >= Some(1.0),
        "{api}"
    );
    assert!(
        series(&api, "ekko_token_cache_lookups_total{result=\"hit\"}") >= Some(1.0),
        "{api}"
    );
    let age = series(
        &api,
        &format!("ekko_host_heartbeat_age_seconds{{host=\"{}\"}}", a.name),
    );
    assert!(age.is_some_and(|s| s < 30.0), "{api}");
    // Queue depths, read from the broker: the status queue and host a's.
    assert!(
        series(
            &api,
            &format!("ekko_queue_messages{{queue=\"{}.status\"}}", c.exchange)
        )
        .is_some(),
        "{api}"
    );
    assert_eq!(
        series(
            &api,
            &format!(
                "ekko_queue_messages{{queue=\"{}.backup.{}\"}}",
                c.exchange, a.name
            )
        ),
        Some(0.0),
        "host a's job queue is drained: {api}"
    );
    // Retention: a pass ran.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, text) = get(&format!("http://127.0.0.1:{retention_port}/metrics")).await;
        if series(&text, "ekko_retention_pass_duration_seconds_count") >= Some(1.0) {
            assert!(text.contains("ekko_retention_segments_total"), "{text}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no pass: {text}\n{}",
            retention.log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Without health_details the listener tells only OK.
    assert_eq!(
        get(&format!("{}/healthcheck", c.api_metrics)).await,
        (200, "OK".to_string())
    );
    // The local health checks: the host has no catalog to check.
    let (s, body) = get(&format!("http://127.0.0.1:{host_port}/healthcheck")).await;
    assert_eq!(s, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["message_bus", "object_store"], "{v}");
    let (s, body) = get(&format!("http://127.0.0.1:{retention_port}/healthcheck")).await;
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("\"catalog\""), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_headers_are_ignored_unless_enabled() {
    let dir = tempfile::tempdir().unwrap();
    let (base, _api) = noauth_api(dir.path(), "").await;
    let v = v1_with_forged_proxy_headers(&base).await;
    assert_eq!(
        v["version"]["links"][0]["href"],
        format!("{base}/v1/"),
        "{v}"
    );
}

/// The v1 version document of `base`, asked with every proxy header
/// forged (scheme, host and path elsewhere).
async fn v1_with_forged_proxy_headers(base: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{base}/v1/"))
        .header("X-Forwarded-Proto", "https")
        .header("X-Forwarded-Host", "evil.example")
        .header("Forwarded", "host=evil.example;proto=https")
        .header("X-Forwarded-Prefix", "/elsewhere")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// An ekko-api without Keystone on a loopback port, with `extra` config:
/// its base URL and the running process.
async fn noauth_api(dir: &Path, extra: &str) -> (String, Service) {
    // The test's own HTTP clients need it, whichever test runs first.
    ekko::cli::install_crypto_provider();
    let port = free_port();
    let conf = write_conf(
        dir,
        "api.conf",
        &format!(
            "[DEFAULT]\nstate_path = {}\n[api]\nbind_host = 127.0.0.1\nbind_port = {port}\nauth_strategy = noauth\n{extra}",
            dir.display()
        ),
    );
    let init = Command::new(env!("CARGO_BIN_EXE_ekko"))
        .args(["--config-file", conf.to_str().unwrap(), "init"])
        .output()
        .unwrap();
    assert!(init.status.success(), "{init:?}");
    let api = Service::start("ekko-api", &conf, dir.join("api.log"), &[]);
    let base = format!("http://127.0.0.1:{port}");
    wait_until_listening(&base, &api).await;
    (base, api)
}

/// Apache's httpd, in the foreground with a configuration of its own.
struct Apache(std::process::Child);

impl Drop for Apache {
    /// SIGTERM: the parent stops its workers (SIGKILL of the parent would
    /// leave them running, holding the port and the test's inherited
    /// file descriptors); SIGKILL only if it does not stop.
    fn drop(&mut self) {
        // SAFETY: sending a signal has no memory-safety effect.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The API at its path on a real Apache, with the site the devstack plugin
/// installs (devstack/files/apache-ekko-api.template): links, the health
/// check and API calls through it carry the path and the host clients
/// used, and a client cannot send the API elsewhere with its own headers.
#[tokio::test]
async fn the_api_behind_apache_at_its_path_links_there() {
    const HTTPD: &str = "/usr/sbin/apache2";
    if !Path::new(HTTPD).exists() {
        assert!(
            std::env::var("EKKO_TEST_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "{HTTPD} is missing: tools/install-deps.sh installs apache2-bin"
        );
        eprintln!("skipping: no {HTTPD}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (api_base, api) = noauth_api(
        dir.path(),
        "[oslo_middleware]\nenable_proxy_headers_parsing = True\n",
    )
    .await;
    let template = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/devstack/files/apache-ekko-api.template"
    ))
    .unwrap();
    let site = template
        .replace("%PATH%", "/instance-backup")
        .replace("%URL%", &api_base);
    let d = dir.path().display();
    let modules = "/usr/lib/apache2/modules";
    let port = free_port();
    let mut conf = String::new();
    for m in ["mpm_event", "authz_core", "proxy", "proxy_http", "headers"] {
        conf += &format!("LoadModule {m}_module {modules}/mod_{m}.so\n");
    }
    conf += &format!(
        "ServerName 127.0.0.1\nListen 127.0.0.1:{port}\nUser nobody\nGroup nogroup\n\
         PidFile {d}/httpd.pid\nErrorLog {d}/httpd-error.log\nDefaultRuntimeDir {d}\n\
         Include {d}/ekko-api-site.conf\n"
    );
    std::fs::write(dir.path().join("ekko-api-site.conf"), site).unwrap();
    std::fs::write(dir.path().join("httpd.conf"), conf).unwrap();
    let _apache = Apache(
        Command::new(HTTPD)
            .args(["-DFOREGROUND", "-f"])
            .arg(dir.path().join("httpd.conf"))
            .spawn()
            .unwrap(),
    );
    let apache = format!("http://127.0.0.1:{port}");
    let endpoint = format!("{apache}/instance-backup");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (status, body) = loop {
        match client.get(format!("{endpoint}/healthcheck")).send().await {
            Ok(r) if r.status() != reqwest::StatusCode::SERVICE_UNAVAILABLE => {
                break (r.status().as_u16(), r.text().await.unwrap())
            }
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!(
                "Apache did not serve the API: {other:?}; {}",
                std::fs::read_to_string(dir.path().join("httpd-error.log")).unwrap_or_default()
            ),
        }
    };
    assert_eq!((status, body.as_str()), (200, "OK"), "{}", api.log());
    // A client's own proxy headers are replaced or dropped, not believed.
    let v = v1_with_forged_proxy_headers(&endpoint).await;
    assert_eq!(
        v["version"]["links"][0]["href"],
        format!("{endpoint}/v1/"),
        "{v}"
    );
    let versions: Value = client
        .get(format!("{endpoint}/"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        versions
            .to_string()
            .contains(&format!("\"{endpoint}/v1/\"")),
        "the version document links through Apache: {versions}"
    );
    // An API call through it (noauth: the caller's project in X-Project-Id).
    let r = client
        .get(format!("{endpoint}/v1/backups"))
        .header("X-Project-Id", "0123456789abcdef0123456789abcdef")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{:?}", r.text().await);
    // The API's own listener still links to itself.
    let direct: Value = client
        .get(format!("{api_base}/v1/"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        direct["version"]["links"][0]["href"],
        format!("{api_base}/v1/")
    );
}

#[test]
fn the_debian_package_unpacks_into_a_clean_tree_with_its_units() {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_ekko-api")).parent().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let built = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tools/build-deb.sh"))
        .args(["--bin-dir", bin_dir.to_str().unwrap(), "--out"])
        .arg(dir.path())
        .env("EKKO_DEB_COMPRESSION", "none")
        .output()
        .unwrap();
    assert!(built.status.success(), "{built:?}");
    let deb = String::from_utf8(built.stdout).unwrap().trim().to_string();
    let field = |name: &str| {
        let o = Command::new("dpkg-deb")
            .args(["-f", &deb, name])
            .output()
            .unwrap();
        String::from_utf8(o.stdout).unwrap().trim().to_string()
    };
    assert_eq!(field("Package"), "ekko");
    assert_eq!(field("Version"), ekko::VERSION);
    let depends = field("Depends");
    for package in ["adduser", "libc6", "libmariadb3", "libsqlite3-0"] {
        assert!(depends.contains(package), "{depends}");
    }

    // Installed into a clean tree, as dpkg would lay it out.
    let root = dir.path().join("root");
    let x = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&root)
        .status()
        .unwrap();
    assert!(x.success());
    for b in [
        "ekko",
        "ekko-api",
        "ekko-backup",
        "ekko-retention",
        "ekko-manage",
        "ekko-status",
    ] {
        let path = root.join("usr/bin").join(b);
        let v = Command::new(&path).arg("--version").output().unwrap();
        assert!(v.status.success(), "{b}: {v:?}");
        assert!(
            String::from_utf8_lossy(&v.stdout).contains(ekko::VERSION),
            "{b}: {v:?}"
        );
    }
    assert!(root.join("etc/ekko/ekko.conf").is_file());
    assert!(root.join("usr/share/doc/ekko/copyright").is_file());
    // The package's default configuration loads (everything commented out).
    let check = Command::new(root.join("usr/bin/ekko-manage"))
        .args([
            "--config-file",
            root.join("etc/ekko/ekko.conf").to_str().unwrap(),
            "config",
            "check",
            "--strict",
        ])
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
    for daemon in ["ekko-api", "ekko-backup", "ekko-retention"] {
        let unit =
            std::fs::read_to_string(root.join(format!("lib/systemd/system/{daemon}.service")))
                .unwrap();
        for line in [
            "Type=notify",
            "Restart=on-failure",
            "NoNewPrivileges=yes",
            &format!("ExecStart=/usr/bin/{daemon} --config-file /etc/ekko/ekko.conf"),
        ] {
            assert!(unit.lines().any(|l| l == line), "{daemon}: no {line}");
        }
        // Only the compute host's worker runs as root (QEMU's sockets).
        assert_eq!(
            unit.lines().any(|l| l == "User=ekko"),
            daemon != "ekko-backup",
            "{daemon}"
        );
    }
    // systemd itself accepts the units (pointed at the unpacked binaries).
    let units = dir.path().join("units");
    std::fs::create_dir(&units).unwrap();
    let mut paths = Vec::new();
    for daemon in ["ekko-api", "ekko-backup", "ekko-retention"] {
        let text =
            std::fs::read_to_string(root.join(format!("lib/systemd/system/{daemon}.service")))
                .unwrap()
                .replace("/usr/bin/", &format!("{}/usr/bin/", root.display()));
        let path = units.join(format!("{daemon}.service"));
        std::fs::write(&path, text).unwrap();
        paths.push(path);
    }
    if let Ok(v) = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&paths)
        .output()
    {
        let err = String::from_utf8_lossy(&v.stderr);
        assert!(
            !err.lines().any(|l| l.contains("ekko-")),
            "systemd-analyze verify: {err}"
        );
    }
}
