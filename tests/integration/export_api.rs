//! Exports as a resource (issue 20): `POST /v1/backups/{id}/exports` runs
//! the export on the instance's host, its URL appears in the resource,
//! clients read the backup over NBD with TLS (mutual, certificates of a
//! test CA), `DELETE` and the lifetime end it and close its port, and a
//! worker restart ends its exports in `error`. Real Keystone, MariaDB,
//! RabbitMQ, Swift and qemu-storage-daemon; QEMU's own TLS client.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cluster::{start_cluster_with, token, Client, Cluster, MIB};
use crate::helpers::rabbit_lock;

const WAIT: Duration = Duration::from_secs(120);

/// A CA, a server certificate for 127.0.0.1 and a client certificate, in
/// QEMU's `tls-creds-x509` layouts: `server/` for Ekko's `[export]`,
/// `client/` for qemu-img, `stranger/` a client of another CA.
fn make_pki(dir: &Path) -> PathBuf {
    let pki = dir.join("pki");
    let sh = format!(
        r#"set -e
cd {pki}
mkdir -p server client stranger
ca() {{ openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=$2" -keyout $1-key.pem -out $1-cert.pem 2>/dev/null; }}
ca ca "Ekko test CA"; ca other "Another CA"
leaf() {{ # name ca cn ext
  openssl req -newkey rsa:2048 -nodes -subj "/CN=$3" -keyout $1-key.pem -out $1.csr 2>/dev/null
  printf '%s\n' "$4" > $1.ext
  openssl x509 -req -in $1.csr -CA $2-cert.pem -CAkey $2-key.pem -CAcreateserial -days 2 -extfile $1.ext -out $1-cert.pem 2>/dev/null
}}
leaf server ca 127.0.0.1 "subjectAltName=IP:127.0.0.1
extendedKeyUsage=serverAuth"
leaf client ca client "extendedKeyUsage=clientAuth"
leaf stranger other stranger "extendedKeyUsage=clientAuth"
cp ca-cert.pem server/ca-cert.pem; cp server-cert.pem server/server-cert.pem; cp server-key.pem server/server-key.pem
cp ca-cert.pem client/ca-cert.pem; cp client-cert.pem client/client-cert.pem; cp client-key.pem client/client-key.pem
cp ca-cert.pem stranger/ca-cert.pem; cp stranger-cert.pem stranger/client-cert.pem; cp stranger-key.pem stranger/client-key.pem
"#,
        pki = pki.display()
    );
    std::fs::create_dir_all(&pki).unwrap();
    let out = Command::new("bash").arg("-c").arg(&sh).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    pki
}

/// `qemu-img compare` of the export at `url` with `reference`, as a TLS
/// client with the credentials in `creds` (none: a plain client).
pub(crate) fn compare(url: &str, creds: Option<&Path>, reference: &Path) -> (bool, String) {
    let u = url::Url::parse(url).unwrap();
    let (host, port, name) = (
        u.host_str().unwrap().to_string(),
        u.port().unwrap(),
        u.path().trim_start_matches('/').to_string(),
    );
    let mut cmd = Command::new("timeout");
    cmd.args(["60", "qemu-img", "compare", "-q"]);
    let mut nbd =
        format!("driver=raw,file.driver=nbd,file.host={host},file.port={port},file.export={name}");
    if let Some(dir) = creds {
        cmd.arg("--object").arg(format!(
            "tls-creds-x509,id=tls0,dir={},endpoint=client",
            dir.display()
        ));
        nbd.push_str(",file.tls-creds=tls0");
    }
    cmd.arg("--image-opts")
        .arg(nbd)
        .arg(format!("driver=raw,file.filename={}", reference.display()));
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

async fn export_of(c: &Client, id: &str) -> Value {
    let (s, v) = c.call("GET", &format!("/v1/exports/{id}"), None).await;
    assert_eq!(s, 200, "{v}");
    v["export"].clone()
}

pub(crate) async fn wait_export(c: &Client, id: &str, states: &[&str], wait: Duration) -> Value {
    let deadline = Instant::now() + wait;
    loop {
        let e = export_of(c, id).await;
        if states.contains(&e["status"].as_str().unwrap_or("")) {
            return e;
        }
        assert!(Instant::now() < deadline, "export {id} not {states:?}: {e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn create(c: &Client, backup: &str, body: Value) -> (u16, Value) {
    c.call(
        "POST",
        &format!("/v1/backups/{backup}/exports"),
        Some(json!({ "export": body })),
    )
    .await
}

/// Nothing listens at the export's address any more.
fn closed(url: &str) -> bool {
    let u = url::Url::parse(url).unwrap();
    let addr = format!("{}:{}", u.host_str().unwrap(), u.port().unwrap());
    std::net::TcpStream::connect(addr).is_err()
}

async fn backup_of(c: &Cluster, tag: &str) -> (String, PathBuf) {
    let h = &c.hosts[0];
    let b = c.member.backup(&h.instance, "auto", WAIT).await;
    assert_eq!(b["status"], "available", "{b}\n{}", h.worker.log());
    let reference = c.dir.join(format!("{tag}-ref.raw"));
    h.qsd.snapshot_to(0, &reference);
    (b["id"].as_str().unwrap().to_string(), reference)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)]
async fn exports_run_on_the_host_over_tls_and_end_when_asked_or_due() {
    let _guard = rabbit_lock();
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let server = pki.join("server");
    let tls = format!(
        "[export]\ntls_cert_file = {s}/server-cert.pem\ntls_key_file = {s}/server-key.pem\n\
         tls_ca_file = {s}/ca-cert.pem\ncache_size = 16M\n",
        s = server.display()
    );
    let Some(mut c) = start_cluster_with(dir.path(), None, false, [&tls, ""]).await else {
        return;
    };
    let h = &c.hosts[0];
    h.qsd.write(0, MIB, &vec![0x5a; 3 * MIB as usize]);
    let (full, full_ref) = backup_of(&c, "full").await;
    h.qsd.write(0, 40 * MIB, &vec![0xa5; 2 * MIB as usize]);
    h.qsd.write_zeroes(0, MIB, MIB);
    let (incr, incr_ref) = backup_of(&c, "incr").await;

    // Exports are an operator's: the backup's own member may not; another
    // project's member does not even see the backup.
    let (s, v) = create(&c.member, &full, json!({})).await;
    assert_eq!(s, 403, "{v}");
    let alt = Client::new(
        &c.member.base,
        token("EKKO_ALT_USERNAME", "EKKO_ALT_PASSWORD", "alt_demo").await,
    );
    let (s, v) = create(&alt, &full, json!({})).await;
    assert_eq!(s, 404, "{v}");
    for (body, why) in [
        (json!({"lifetime": 0}), "lifetime 0"),
        (
            json!({"lifetime": 999_999_999}),
            "lifetime past the maximum",
        ),
        (json!({"disk": "vdz"}), "no such disk"),
        (json!({"host": "nowhere"}), "unknown host"),
        (json!({"colour": "red"}), "unknown field"),
    ] {
        let (s, v) = create(&c.admin, &full, body).await;
        assert!(s == 400 || s == 409, "{why}: {s} {v}");
    }

    // Full and incremental: each served by the instance's host, bit-exact
    // through QEMU's TLS client.
    let mut urls = Vec::new();
    for (backup, reference) in [(&full, &full_ref), (&incr, &incr_ref)] {
        let (s, v) = create(&c.admin, backup, json!({"lifetime": 300})).await;
        assert_eq!(s, 202, "{v}");
        assert_eq!(v["export"]["status"], "starting", "{v}");
        let id = v["export"]["id"].as_str().unwrap().to_string();
        let e = wait_export(&c.admin, &id, &["active", "error"], WAIT).await;
        assert_eq!(e["status"], "active", "{e}\n{}", c.hosts[0].worker.log());
        assert_eq!(e["host"], c.hosts[0].name.as_str());
        assert_eq!(e["tls"], true);
        let url = e["url"].as_str().unwrap().to_string();
        assert!(
            url.starts_with("nbd://127.0.0.1:") && !url.contains(&id),
            "{url}"
        );
        let (same, out) = compare(&url, Some(&pki.join("client")), reference);
        assert!(same, "{backup}: export differs from the disk: {out}");
        urls.push((id, url));
    }
    // Without TLS, or with a certificate of another CA: nothing is read.
    let (id, url) = urls[0].clone();
    let (plain, out) = compare(&url, None, &full_ref);
    assert!(!plain, "a plain client read the export: {out}");
    let (stranger, out) = compare(&url, Some(&pki.join("stranger")), &full_ref);
    assert!(!stranger, "a client of another CA read the export: {out}");
    // The right client without the export's secret name (the default
    // name, or a guess) reads nothing either.
    let (addr, _) = url.rsplit_once('/').unwrap();
    for other in [format!("{addr}/"), format!("{addr}/{id}")] {
        let (read, out) = compare(&other, Some(&pki.join("client")), &full_ref);
        assert!(!read, "{other} read the export: {out}");
    }
    // Still served to the right client after those attempts.
    assert!(compare(&url, Some(&pki.join("client")), &full_ref).0);

    // Listed per backup; invisible to the member.
    let (s, v) = c
        .admin
        .call(
            "GET",
            &format!("/v1/exports?all_projects=true&backup_id={full}"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let listed: Vec<_> = v["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].clone())
        .collect();
    assert_eq!(listed, vec![json!(id)], "{v}");
    let (s, _) = c
        .member
        .call("GET", &format!("/v1/exports/{id}"), None)
        .await;
    assert_eq!(s, 403);

    // DELETE: the host stops serving it and its port closes.
    let (s, v) = c
        .admin
        .call("DELETE", &format!("/v1/exports/{id}"), None)
        .await;
    assert_eq!(s, 202, "{v}");
    let e = wait_export(&c.admin, &id, &["ended", "error"], WAIT).await;
    assert_eq!(e["status"], "ended", "{e}");
    assert!(closed(&url), "the deleted export still listens");
    let (s, _) = c
        .admin
        .call("DELETE", &format!("/v1/exports/{id}"), None)
        .await;
    assert_eq!(s, 202, "deleting an ended export changes nothing");
    assert_eq!(export_of(&c.admin, &id).await["status"], "ended");

    // A short lifetime: it ends by itself.
    let (s, v) = create(&c.admin, &incr, json!({"lifetime": 3})).await;
    assert_eq!(s, 202, "{v}");
    let short = v["export"]["id"].as_str().unwrap().to_string();
    let e = wait_export(&c.admin, &short, &["active", "ended", "error"], WAIT).await;
    let short_url = e["url"].as_str().unwrap_or_default().to_string();
    let e = wait_export(&c.admin, &short, &["ended", "error"], WAIT).await;
    assert_eq!(e["status"], "ended", "{e}");
    assert!(short_url.is_empty() || closed(&short_url));

    // A backup being exported cannot be deleted (its reads would fail).
    let (s, v) = c
        .member
        .call("DELETE", &format!("/v1/backups/{incr}"), None)
        .await;
    assert_eq!(s, 409, "{v}");

    // The worker dies with an export live: the catalog does not keep
    // showing it active (the restarted worker's heartbeats leave it out).
    let (live, live_url) = urls[1].clone();
    c.hosts[0].worker.kill9();
    c.hosts[0].worker.restart_with(&[]);
    let e = wait_export(&c.admin, &live, &["ended", "error"], WAIT).await;
    assert_eq!(e["status"], "error", "{e}");
    assert!(closed(&live_url));
}
