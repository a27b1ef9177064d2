//! Tenants restore their backups into Glance images by themselves (issue
//! 19), against the real Glance, Keystone, Swift, RabbitMQ and MariaDB of
//! the test environment: full and incremental backups, raw and qcow2,
//! plain and encrypted, each image downloaded from Glance and compared
//! bit-exact with the disk at backup time; who may; Glance's quota; cancel;
//! Glance stopped mid-upload; a user token that expires during the upload.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cluster::{start_cluster_with, token, Client, Cluster, MIB};
use crate::helpers::{rabbit_lock, service_env};
use crate::qsd::identical;

const WAIT: Duration = Duration::from_secs(180);

/// Host b uploads slowly (a 64 MiB raw image takes ~32 s): long enough to
/// cancel, stop Glance, or outlive a 20 s token.
const SLOW_HOST: &str = "[glance]\nupload_rate_limit = 2M\n";

pub(crate) fn glance_url() -> Option<String> {
    service_env("EKKO_GLANCE_URL")
}

pub(crate) async fn glance(tok: &str, method: &str, path: &str) -> (u16, Value) {
    let url = glance_url().expect("EKKO_GLANCE_URL");
    let resp = reqwest::Client::new()
        .request(method.parse().unwrap(), format!("{url}{path}"))
        .header("X-Auth-Token", tok)
        .send()
        .await
        .expect("Glance answers");
    let s = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (s, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Download an image's data from Glance into `out`.
pub(crate) async fn download(tok: &str, image: &str, out: &Path) {
    let url = glance_url().expect("EKKO_GLANCE_URL");
    let resp = reqwest::Client::new()
        .get(format!("{url}/v2/images/{image}/file"))
        .header("X-Auth-Token", tok)
        .send()
        .await
        .expect("Glance answers");
    assert_eq!(resp.status().as_u16(), 200, "download {image}");
    let bytes = resp.bytes().await.expect("image data");
    std::fs::write(out, &bytes).unwrap();
}

/// `qemu-img compare` of a raw reference with an image in `format`.
fn same_disk(reference: &Path, image: &Path, format: &str) -> bool {
    Command::new("qemu-img")
        .args(["compare", "-q", "-f", "raw", "-F", format])
        .arg(reference)
        .arg(image)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Ask for a restore of `backup` into an image; the API's answer.
async fn restore_image(c: &Client, backup: &str, name: &str, format: &str) -> (u16, Value) {
    c.call(
        "POST",
        "/v1/restores",
        Some(json!({"restore": {"backup_id": backup, "target": {
            "type": "image", "name": name, "disk_format": format, "visibility": "private"}}})),
    )
    .await
}

/// [`restore_image`] that must be accepted: the restore's id and its image's.
async fn start_image_restore(
    c: &Client,
    backup: &str,
    name: &str,
    format: &str,
) -> (String, String) {
    let (s, v) = restore_image(c, backup, name, format).await;
    assert_eq!(s, 202, "{v}");
    let id = |v: &Value| v.as_str().unwrap().to_string();
    (
        id(&v["restore"]["id"]),
        id(&v["restore"]["target"]["image_id"]),
    )
}

pub(crate) async fn wait_restore(c: &Client, id: &str, states: &[&str]) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (s, v) = c.call("GET", &format!("/v1/restores/{id}"), None).await;
        if s == 200 && states.contains(&v["restore"]["status"].as_str().unwrap_or("")) {
            return v["restore"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "restore {id} never {states:?}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Wait until Glance says `image` is in one of `states` (`"gone"`: 404).
async fn wait_image(tok: &str, image: &str, states: &[&str], wait: Duration) -> Value {
    let deadline = Instant::now() + wait;
    loop {
        let (s, v) = glance(tok, "GET", &format!("/v2/images/{image}")).await;
        let state = if s == 404 {
            "gone"
        } else {
            v["status"].as_str().unwrap_or("")
        };
        if states.contains(&state) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "image {image} never {states:?}: {s} {v}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Restore `backup` into an image in `format`, wait for it, and check the
/// image: the project's, private, active, the backup's properties, and
/// bit-exact with `reference`. Returns the image id.
async fn assert_image_restore(
    c: &Cluster,
    tok: &str,
    backup: &str,
    format: &str,
    reference: &Path,
    tag: &str,
) -> String {
    let (rid, image) =
        start_image_restore(&c.member, backup, &format!("ekko-test-{tag}"), format).await;
    let r = wait_restore(&c.member, &rid, &["completed", "error"]).await;
    assert_eq!(r["status"], "completed", "{r}\n{}", c.api.log());
    assert_eq!(r["target"]["image_id"], image.as_str(), "{r}");
    let project = service_env("EKKO_DEMO_PROJECT_ID").unwrap();
    let (s, info) = glance(tok, "GET", &format!("/v2/images/{image}")).await;
    assert_eq!(s, 200, "{info}");
    assert_eq!(info["status"], "active", "{info}");
    assert_eq!(info["owner"], project.as_str(), "{info}");
    assert_eq!(info["visibility"], "private", "{info}");
    assert_eq!(info["disk_format"], format, "{info}");
    assert_eq!(info["ekko_backup_id"], backup, "{info}");
    assert!(info["ekko_instance_id"].as_str().is_some(), "{info}");
    assert_eq!(info["min_disk"], 1, "{info}");
    assert_eq!(info["virtual_size"].as_u64(), Some(64 * MIB), "{info}");
    let out = c.dir.join(format!("{tag}.{format}"));
    download(tok, &image, &out).await;
    assert!(
        same_disk(reference, &out, format),
        "{tag}: image {image} differs from the disk at backup time"
    );
    if format == "raw" {
        assert!(identical(reference, &out), "{tag}: raw image not bit-exact");
    }
    image
}

/// A backup of host `i`'s instance, and the disk as it was backed up.
async fn backup_now(c: &Cluster, i: usize, tag: &str) -> (String, PathBuf) {
    let h = &c.hosts[i];
    let b = c.member.backup(&h.instance, "auto", WAIT).await;
    assert_eq!(b["status"], "available", "{b}\n{}", h.worker.log());
    let reference = c.dir.join(format!("{tag}-ref.raw"));
    h.qsd.snapshot_to(0, &reference);
    (b["id"].as_str().unwrap().to_string(), reference)
}

/// Limit the demo project's images to `mib` MiB in total (Keystone
/// unified limits, which Glance reads); returns the limit's id.
async fn image_size_limit(admin: &str, mib: u64) -> String {
    let ks = service_env("EKKO_KEYSTONE_AUTH_URL").unwrap();
    let project = service_env("EKKO_DEMO_PROJECT_ID").unwrap();
    let http = reqwest::Client::new();
    let services: Value = http
        .get(format!("{ks}/services?type=image"))
        .header("X-Auth-Token", admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let service = services["services"][0]["id"].as_str().unwrap().to_string();
    let resp = http
        .post(format!("{ks}/limits"))
        .header("X-Auth-Token", admin)
        .json(
            &json!({"limits": [{"service_id": service, "project_id": project,
            "region_id": "RegionOne", "resource_name": "image_size_total",
            "resource_limit": mib}]}),
        )
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "limit: {}", resp.status());
    let made: Value = resp.json().await.unwrap();
    made["limits"][0]["id"].as_str().unwrap().to_string()
}

/// Remove the demo project's image limits a failed run left behind
/// (listing limits takes a system-scoped token).
async fn clear_limits() {
    let ks = service_env("EKKO_KEYSTONE_AUTH_URL").unwrap();
    let project = service_env("EKKO_DEMO_PROJECT_ID").unwrap();
    let http = reqwest::Client::new();
    let body = json!({"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": service_env("OS_USERNAME").unwrap(), "domain": {"name": "Default"},
            "password": service_env("OS_PASSWORD").unwrap()}}},
        "scope": {"system": {"all": true}}}});
    let resp = http
        .post(format!("{ks}/auth/tokens?nocatalog"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let system = resp.headers()["X-Subject-Token"]
        .to_str()
        .unwrap()
        .to_string();
    let limits: Value = http
        .get(format!(
            "{ks}/limits?project_id={project}&resource_name=image_size_total"
        ))
        .header("X-Auth-Token", &system)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for l in limits["limits"].as_array().cloned().unwrap_or_default() {
        remove_limit(&system, l["id"].as_str().unwrap()).await;
    }
}

async fn remove_limit(admin: &str, id: &str) {
    let ks = service_env("EKKO_KEYSTONE_AUTH_URL").unwrap();
    let resp = reqwest::Client::new()
        .delete(format!("{ks}/limits/{id}"))
        .header("X-Auth-Token", admin)
        .send()
        .await
        .unwrap();
    assert!(
        resp.status().is_success(),
        "limit {id} not removed: {}",
        resp.status()
    );
}

/// Stop or start glance-api the way the test environment runs it.
fn glance_api(action: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/test-env.sh");
    let o = Command::new("bash")
        .arg(script)
        .arg(format!("glance-{action}"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "glance {action}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A token of the demo member that expires after the short Keystone's
/// TTL (20 s), valid everywhere until then.
async fn short_member_token() -> String {
    let auth_url = service_env("EKKO_KEYSTONE_SHORT_AUTH_URL").expect("short Keystone");
    let body = json!({"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": service_env("EKKO_DEMO_USERNAME").unwrap(), "domain": {"name": "Default"},
            "password": service_env("EKKO_DEMO_PASSWORD").unwrap()}}},
        "scope": {"project": {"name": "demo", "domain": {"name": "Default"}}}}});
    let resp = reqwest::Client::new()
        .post(format!("{auth_url}/auth/tokens?nocatalog"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "short token: {}", resp.status());
    resp.headers()["X-Subject-Token"]
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)]
async fn tenants_restore_backups_into_glance_images() {
    let _guard = rabbit_lock();
    if glance_url().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(c) = start_cluster_with(dir.path(), None, false, ["", SLOW_HOST]).await else {
        return;
    };
    let member = token("EKKO_DEMO_USERNAME", "EKKO_DEMO_PASSWORD", "demo").await;
    let admin = token("OS_USERNAME", "OS_PASSWORD", "admin").await;
    clear_limits().await;

    // Full, then incremental, each into raw and qcow2, checked bit-exact.
    let h = &c.hosts[0];
    h.qsd.write(0, 0, &vec![0x5a; 3 * MIB as usize]);
    h.qsd.write(0, 37 * MIB + 4096, &vec![0xa5; MIB as usize]);
    let (full, full_ref) = backup_now(&c, 0, "full").await;
    let mut images = Vec::new();
    for format in ["raw", "qcow2"] {
        images.push(
            assert_image_restore(
                &c,
                &member,
                &full,
                format,
                &full_ref,
                &format!("full-{format}"),
            )
            .await,
        );
    }
    h.qsd.write(0, 20 * MIB, &vec![0x33; 2 * MIB as usize]);
    h.qsd.write_zeroes(0, 0, MIB);
    let (incr, incr_ref) = backup_now(&c, 0, "incr").await;
    let (_, v) = c
        .member
        .call("GET", &format!("/v1/backups/{incr}"), None)
        .await;
    assert_eq!(v["backup"]["kind"], "incremental", "{v}");
    for format in ["raw", "qcow2"] {
        images.push(
            assert_image_restore(
                &c,
                &member,
                &incr,
                format,
                &incr_ref,
                &format!("incr-{format}"),
            )
            .await,
        );
    }

    // A reader may not; another project's member learns nothing: the
    // same answer as for a backup that does not exist.
    let reader = Client::new(
        &c.member.base,
        token("EKKO_READER_USERNAME", "EKKO_READER_PASSWORD", "demo").await,
    );
    let (s, v) = restore_image(&reader, &full, "no", "raw").await;
    assert_eq!(s, 403, "{v}");
    let alt = Client::new(
        &c.member.base,
        token("EKKO_ALT_USERNAME", "EKKO_ALT_PASSWORD", "alt_demo").await,
    );
    let (s, theirs) = restore_image(&alt, &full, "stolen", "raw").await;
    let missing = uuid::Uuid::new_v4().to_string();
    let (s2, none) = restore_image(&alt, &missing, "stolen", "raw").await;
    assert_eq!((s, s2), (400, 400), "{theirs} {none}");
    assert_eq!(
        theirs["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .replace(&full, "X"),
        none["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .replace(&missing, "X"),
    );
    // An admin sees every project's backups, but an image is made in the
    // token's project: refused, never written into the wrong project.
    let (s, v) = restore_image(&c.admin, &full, "wrong-project", "raw").await;
    assert_eq!(s, 400, "{v}");
    assert!(v.to_string().contains("scoped to its project"), "{v}");
    // Bad input: a clear 400, nothing created.
    let (s, v) = c
        .member
        .call(
            "POST",
            "/v1/restores",
            Some(json!({"restore": {"backup_id": full,
            "target": {"type": "image", "name": "x", "visibility": "public"}}})),
        )
        .await;
    assert_eq!(s, 400, "{v}");

    // Over the project's image quota (Glance refuses an upload once the
    // project's images exceed it: the ones above hold 64 MiB already): a
    // clear error, no image left.
    let limit = image_size_limit(&admin, 1).await;
    let (s, v) = restore_image(&c.member, &full, "over-quota", "raw").await;
    let over = if s == 202 {
        let rid = v["restore"]["id"].as_str().unwrap();
        let image = v["restore"]["target"]["image_id"]
            .as_str()
            .unwrap()
            .to_string();
        let r = wait_restore(&c.member, rid, &["completed", "error"]).await;
        assert_eq!(r["status"], "error", "{r}");
        wait_image(&member, &image, &["gone"], Duration::from_secs(30)).await;
        r["error"].as_str().unwrap_or_default().to_string()
    } else {
        assert_eq!(s, 403, "{v}");
        v.to_string()
    };
    remove_limit(&admin, &limit).await;
    assert!(over.contains("quota") || over.contains("limit"), "{over}");

    // Cancel mid-upload (host b uploads slowly): the partial image goes.
    let b = &c.hosts[1];
    b.qsd.write(0, 0, &vec![0x77; 8 * MIB as usize]);
    let (slow, slow_ref) = backup_now(&c, 1, "slow").await;
    let (rid, image) = start_image_restore(&c.member, &slow, "cancelled", "raw").await;
    wait_image(&member, &image, &["saving"], WAIT).await;
    let (s, v) = c
        .member
        .call(
            "POST",
            &format!("/v1/restores/{rid}/action"),
            Some(json!({"cancel": {}})),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let r = wait_restore(&c.member, &rid, &["error"]).await;
    assert!(r["error"].as_str().unwrap().contains("cancelled"), "{r}");
    wait_image(&member, &image, &["gone"], Duration::from_secs(30)).await;

    // Glance stopped mid-upload: the restore fails with the reason, and
    // once Glance is back no image is left.
    let (rid, image) = start_image_restore(&c.member, &slow, "glance-down", "raw").await;
    wait_image(&member, &image, &["saving"], WAIT).await;
    glance_api("stop");
    let r = wait_restore(&c.member, &rid, &["error"]).await;
    glance_api("start");
    let why = r["error"].as_str().unwrap_or_default();
    assert!(why.contains("image"), "{r}");
    wait_image(&member, &image, &["gone"], Duration::from_secs(90)).await;

    // A token that expires during the upload: the restore still completes
    // (Glance takes it with Ekko's service token).
    let short = Client::new(&c.member.base, short_member_token().await);
    let started = Instant::now();
    let (rid, image) = start_image_restore(&short, &slow, "outlives-token", "raw").await;
    let r = wait_restore(&c.member, &rid, &["completed", "error"]).await;
    assert_eq!(r["status"], "completed", "{r}\n{}", b.worker.log());
    let ttl: u64 = service_env("EKKO_KEYSTONE_SHORT_TOKEN_TTL")
        .and_then(|t| t.parse().ok())
        .unwrap_or(20);
    assert!(
        started.elapsed() > Duration::from_secs(ttl + 2),
        "the upload outlived the token"
    );
    let (s, _) = short.call("GET", "/v1/restores", None).await;
    assert_eq!(s, 401, "the short token has expired");
    let out = c.dir.join("outlives.raw");
    download(&member, &image, &out).await;
    assert!(
        identical(&slow_ref, &out),
        "image after token expiry differs"
    );
    images.push(image);

    // The uploading host killed mid-upload: the restore ends in error
    // (its job reaped as stalled) and the half image goes.
    let mut c = c;
    let (rid, image) = start_image_restore(&c.member, &slow, "host-killed", "raw").await;
    wait_image(&member, &image, &["saving"], WAIT).await;
    c.hosts[1].worker.kill9();
    let r = wait_restore(&c.member, &rid, &["error"]).await;
    assert!(
        r["error"].as_str().unwrap().contains("stopped reporting"),
        "{r}"
    );
    wait_image(&member, &image, &["gone"], Duration::from_secs(60)).await;
    c.hosts[1].worker.restart_with(&[]);

    // The instance's host is dead (the instance lost with it): another
    // live host restores into the image.
    c.hosts[0].worker.kill9();
    tokio::time::sleep(Duration::from_secs(22)).await;
    let (s, v) = restore_image(&c.member, &full, "host-gone", "raw").await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(
        v["restore"]["target"]["host"],
        c.hosts[1].name.as_str(),
        "{v}"
    );
    let rid = v["restore"]["id"].as_str().unwrap().to_string();
    let r = wait_restore(&c.member, &rid, &["completed", "error"]).await;
    assert_eq!(r["status"], "completed", "{r}");
    images.push(r["target"]["image_id"].as_str().unwrap().to_string());

    for i in images {
        glance(&member, "DELETE", &format!("/v2/images/{i}")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)]
async fn encrypted_backups_restore_into_images_on_the_restore_host() {
    let _guard = rabbit_lock();
    if glance_url().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Public-key mode: host b can only write; host a (the restore side)
    // reads and uploads.
    let Some(c) = start_cluster_with(dir.path(), None, true, ["", ""]).await else {
        return;
    };
    let member = token("EKKO_DEMO_USERNAME", "EKKO_DEMO_PASSWORD", "demo").await;
    let b = &c.hosts[1];
    b.qsd.write(0, MIB, &vec![0xc3; 5 * MIB as usize]);
    let (full, full_ref) = backup_now(&c, 1, "enc-full").await;
    b.qsd.write(0, 50 * MIB, &vec![0x3c; MIB as usize]);
    let (incr, incr_ref) = backup_now(&c, 1, "enc-incr").await;
    let mut images = Vec::new();
    for (backup, reference, tag) in [
        (&full, &full_ref, "enc-full"),
        (&incr, &incr_ref, "enc-incr"),
    ] {
        for format in ["raw", "qcow2"] {
            images.push(
                assert_image_restore(
                    &c,
                    &member,
                    backup,
                    format,
                    reference,
                    &format!("{tag}-{format}"),
                )
                .await,
            );
        }
    }
    assert!(
        c.hosts[0].worker.log().contains(&images[0]),
        "the restore side uploaded"
    );

    // The operator's command line does the same from where the master key
    // is, with a token of the backup's project.
    let cli = |tok: &str, name: &str| {
        Command::new(env!("CARGO_BIN_EXE_ekko"))
            .args(["--config-file", c.operator_conf.to_str().unwrap()])
            .args(["restore", &incr, "--image", name, "--format", "qcow2"])
            .env("OS_TOKEN", tok)
            .output()
            .unwrap()
    };
    let o = cli(&member, "ekko-test-cli");
    let said = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let image = said
        .split_whitespace()
        .skip_while(|w| *w != "image")
        .nth(1)
        .unwrap()
        .to_string();
    let out = c.dir.join("cli.qcow2");
    download(&member, &image, &out).await;
    assert!(same_disk(&incr_ref, &out, "qcow2"), "CLI image differs");
    images.push(image);
    // A token of another project makes nothing there.
    let alt = token("EKKO_ALT_USERNAME", "EKKO_ALT_PASSWORD", "alt_demo").await;
    let o = cli(&alt, "ekko-test-cli-alt");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("backup's project"), "{err}");
    let (s, listed) = glance(&alt, "GET", "/v2/images?name=ekko-test-cli-alt").await;
    assert_eq!(s, 200);
    assert_eq!(
        listed["images"].as_array().map(Vec::len),
        Some(0),
        "{listed}"
    );
    for i in images {
        glance(&member, "DELETE", &format!("/v2/images/{i}")).await;
    }
}
