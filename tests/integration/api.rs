//! ekko-api against the real Keystone and MariaDB of the test environment:
//! authentication, policy personas, project isolation, OpenStack API
//! conventions (request ids, microversions, error bodies, pagination).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ekko::db::backups::{self, Backup, BackupStatus};
use ekko::db::instances::{self, DiskReport};
use serde_json::{json, Value};

use crate::helpers::{free_port, mariadb_db, service_env};

struct Api {
    child: Child,
    base: String,
    log: std::path::PathBuf,
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start ekko-api with `auth_url`, on MariaDB database `db_url`.
async fn start_api(dir: &Path, name: &str, db_url: &str, auth_url: &str) -> Api {
    ekko::cli::install_crypto_provider();
    let port = free_port();
    let conf = dir.join(format!("{name}.conf"));
    std::fs::write(
        &conf,
        format!(
            "[DEFAULT]\nstate_path = {state}\n[api]\nbind_host = 127.0.0.1\nbind_port = {port}\nworkers = 2\nmax_limit = 50\n\
             [database]\nconnection = {db_url}\n\
             [keystone_authtoken]\nauth_url = {auth_url}\nwww_authenticate_uri = http://keystone.example:5000\n\
             username = {user}\npassword = {password}\nproject_name = {project}\nhttp_request_max_retries = 1\n",
            state = dir.join("state").display(),
            user = std::env::var("EKKO_SERVICE_USERNAME").unwrap(),
            password = std::env::var("EKKO_SERVICE_PASSWORD").unwrap(),
            project = std::env::var("EKKO_SERVICE_PROJECT").unwrap(),
        ),
    )
    .unwrap();
    let log = dir.join(format!("{name}.log"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ekko-api"));
    for (k, _) in std::env::vars() {
        if k.starts_with("EKKO__") {
            cmd.env_remove(k);
        }
    }
    let child = cmd
        .arg("--config-file")
        .arg(&conf)
        .env("RUST_LOG", "info,ekko::auth=debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::get(format!("{base}/")).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "ekko-api did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Api { child, base, log }
}

/// A project-scoped token for `user` (password from the environment).
async fn token(user_var: &str, password_var: &str, project: &str) -> String {
    token_and_user(user_var, password_var, project).await.0
}

/// A token and its user's id.
async fn token_and_user(user_var: &str, password_var: &str, project: &str) -> (String, String) {
    crate::helpers::keystone_token(user_var, password_var, project).await
}

struct Caller {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Caller {
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        };
        let mut req = self.http.request(method.parse().unwrap(), url);
        if let Some(t) = &self.token {
            req = req.header("X-Auth-Token", t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::Null);
        (status, headers, value)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let (s, _, v) = self.call("GET", path, None).await;
        (s, v)
    }
}

fn ids(list: &Value) -> Vec<String> {
    ids_of(list, "backups")
}

fn ids_of(list: &Value, collection: &str) -> Vec<String> {
    list[collection]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect()
}

/// Every id of a list, following its `<collection>_links` from `first`.
async fn all_pages(caller: &Caller, first: &str, collection: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let mut next = Some(first.to_string());
    while let Some(url) = next {
        let (s, v) = caller.get(&url).await;
        assert_eq!(s, 200, "{url}: {v}");
        seen.extend(ids_of(&v, collection));
        next = v[format!("{collection}_links")][0]["href"]
            .as_str()
            .map(String::from);
        assert!(seen.len() < 10_000, "pages never end");
    }
    seen
}

/// The error body of the API-SIG, with the request id of the header.
fn assert_error(status: u16, headers: &reqwest::header::HeaderMap, body: &Value, code: &str) {
    let e = &body["errors"][0];
    assert_eq!(e["status"], status, "{body}");
    assert_eq!(e["code"], format!("instance-backup.{code}"), "{body}");
    assert!(
        e["title"].is_string() && e["detail"].is_string() && e["links"].is_array(),
        "{body}"
    );
    assert_eq!(
        e["request_id"].as_str().unwrap(),
        headers["x-openstack-request-id"].to_str().unwrap(),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keystone_personas_projects_and_conventions() {
    let Some(auth_url) = service_env("EKKO_KEYSTONE_AUTH_URL") else {
        return;
    };
    let Some(t) = mariadb_db() else { return };
    t.db.sync().unwrap();
    let demo_project = std::env::var("EKKO_DEMO_PROJECT_ID").unwrap();
    let alt_project = std::env::var("EKKO_ALT_PROJECT_ID").unwrap();
    let conn = &mut t.db.conn().unwrap();
    let disk = [DiskReport {
        device: "vda".into(),
        node_name: "vda".into(),
        virtual_size: 1 << 30,
    }];
    instances::upsert(
        conn,
        "inst-demo",
        &demo_project,
        "compute-1",
        "web",
        &disk,
        instances::MOVE_ALWAYS,
    )
    .unwrap();
    instances::upsert(
        conn,
        "inst-alt",
        &alt_project,
        "compute-1",
        "db",
        &disk,
        instances::MOVE_ALWAYS,
    )
    .unwrap();
    // Older, finished backups of the demo instance, for listing and paging.
    let mut finished = Vec::new();
    for n in 0..5 {
        let mut b = Backup::queued(
            &demo_project,
            "someone",
            "inst-demo",
            &format!("old-{n}"),
            "auto",
        );
        b.created_at -= chrono::Duration::hours(10 - n);
        backups::insert(conn, &b).unwrap();
        backups::transition(conn, &b.id, BackupStatus::Error, Some("test")).unwrap();
        finished.push(b.id);
    }

    let dir = tempfile::tempdir().unwrap();
    let api = start_api(dir.path(), "api", &t.url, &auth_url).await;
    let http = reqwest::Client::new();
    let as_ = |token: Option<String>| Caller {
        http: http.clone(),
        base: api.base.clone(),
        token,
    };
    let anonymous = as_(None);
    let (member_token, demo_user) =
        token_and_user("EKKO_DEMO_USERNAME", "EKKO_DEMO_PASSWORD", "demo").await;
    let member = as_(Some(member_token));
    let reader = as_(Some(
        token("EKKO_READER_USERNAME", "EKKO_READER_PASSWORD", "demo").await,
    ));
    let alt_name = std::env::var("EKKO_ALT_PROJECT").unwrap();
    let alt = as_(Some(
        token("EKKO_ALT_USERNAME", "EKKO_ALT_PASSWORD", &alt_name).await,
    ));
    let admin = as_(Some(token("OS_USERNAME", "OS_PASSWORD", "admin").await));

    // Version discovery needs no token; every response carries the headers.
    let (s, h, v) = anonymous.call("GET", "/", None).await;
    assert_eq!(s, 200);
    assert_eq!(v["versions"][0]["id"], "v1");
    assert_eq!(v["versions"][0]["status"], "CURRENT");
    assert!(h["x-openstack-request-id"]
        .to_str()
        .unwrap()
        .starts_with("req-"));
    assert_eq!(h["openstack-api-version"], "instance-backup 1.0");
    assert!(h["vary"]
        .to_str()
        .unwrap()
        .contains("OpenStack-API-Version"));

    // No token, a bad token: 401 with WWW-Authenticate.
    let (s, h, v) = anonymous.call("GET", "/v1/backups", None).await;
    assert_eq!(s, 401);
    assert_eq!(
        h["www-authenticate"],
        "Keystone uri=\"http://keystone.example:5000\""
    );
    assert_error(s, &h, &v, "unauthorized");
    let forged = as_(Some("gAAAAABnot-a-real-token".into()));
    let (s, h, _) = forged.call("GET", "/v1/backups", None).await;
    assert_eq!(s, 401);
    assert!(h.contains_key("www-authenticate"));

    // Microversions: out of range 406, malformed 400.
    let (s, h, v) = {
        let r = http
            .get(format!("{}/v1/backups", api.base))
            .header("X-Auth-Token", member.token.clone().unwrap())
            .header("OpenStack-API-Version", "instance-backup 9.9")
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        let h = r.headers().clone();
        (s, h, r.json::<Value>().await.unwrap())
    };
    assert_eq!(s, 406);
    assert_error(s, &h, &v, "version_not_supported");
    assert_eq!(v["errors"][0]["max_version"], "1.0");
    let r = http
        .get(format!("{}/v1/backups", api.base))
        .header("X-Auth-Token", member.token.clone().unwrap())
        .header("OpenStack-API-Version", "instance-backup one")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);

    // The member creates a backup: 202 and queued; a second one while it
    // is queued conflicts.
    let (s, h, v) = member
        .call(
            "POST",
            "/v1/backups",
            Some(json!({"backup": {"instance_id": "inst-demo", "name": "nightly"}})),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["backup"]["status"], "queued");
    let created = v["backup"]["id"].as_str().unwrap().to_string();
    assert!(h["location"]
        .to_str()
        .unwrap()
        .ends_with(&format!("/v1/backups/{created}")));
    let (s, h, v) = member
        .call(
            "POST",
            "/v1/backups",
            Some(json!({"backup": {"instance_id": "inst-demo"}})),
        )
        .await;
    assert_eq!(s, 409, "{v}");
    assert_error(s, &h, &v, "conflict");
    // Bad input: clear 400s.
    for bad in [
        json!({"backup": {"instance_id": "inst-demo", "mode": "sometimes"}}),
        json!({"backup": {"instance_id": "inst-demo", "colour": "red"}}),
        json!({"nothing": {}}),
    ] {
        let (s, h, v) = member.call("POST", "/v1/backups", Some(bad)).await;
        assert_eq!(s, 400, "{v}");
        assert_error(s, &h, &v, "bad_request");
    }
    // Another project's instance does not exist for the member (named in
    // the body: 400, as for an unknown one).
    for other in ["inst-alt", "no-such-instance"] {
        let (s, _, v) = member
            .call(
                "POST",
                "/v1/backups",
                Some(json!({"backup": {"instance_id": other}})),
            )
            .await;
        assert_eq!(s, 400, "{v}");
        assert!(v["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("does not exist"));
    }

    let (s, v) = member.get(&format!("/v1/backups/{created}")).await;
    assert_eq!(s, 200);
    assert_eq!(v["backup"]["name"], "nightly");
    let (s, v) = member.get("/v1/backups").await;
    assert_eq!(s, 200);
    assert_eq!(ids(&v).len(), 6);

    // The reader reads, but may not create or delete.
    let (s, v) = reader.get("/v1/backups").await;
    assert_eq!(s, 200);
    assert!(ids(&v).contains(&created));
    let (s, h, v) = reader
        .call(
            "POST",
            "/v1/backups",
            Some(json!({"backup": {"instance_id": "inst-demo"}})),
        )
        .await;
    assert_eq!(s, 403);
    assert_error(s, &h, &v, "forbidden");
    let (s, _, _) = reader
        .call("DELETE", &format!("/v1/backups/{}", finished[0]), None)
        .await;
    assert_eq!(s, 403);

    // The other project sees nothing of demo's: 404, never 403.
    let (s, v) = alt.get("/v1/backups").await;
    assert_eq!(s, 200);
    assert!(ids(&v).is_empty(), "{v}");
    for method in ["GET", "DELETE"] {
        let (s, h, v) = alt
            .call(method, &format!("/v1/backups/{created}"), None)
            .await;
        assert_eq!(s, 404, "{method}");
        assert_error(s, &h, &v, "not_found");
    }
    let (s, _) = alt.get("/v1/instances/inst-demo").await;
    assert_eq!(s, 404);
    let (s, _) = alt.get("/v1/backups?all_projects=true").await;
    assert_eq!(s, 403);

    // The admin sees every project.
    let (s, v) = admin.get("/v1/backups?all_projects=true").await;
    assert_eq!(s, 200);
    assert!(ids(&v).contains(&created));
    let (s, v) = admin.get(&format!("/v1/backups/{created}")).await;
    assert_eq!(s, 200, "{v}");

    // Instances: the member's project only.
    let (s, v) = member.get("/v1/instances").await;
    assert_eq!(s, 200);
    let listed: Vec<&str> = v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, vec!["inst-demo"]);
    assert_eq!(v["instances"][0]["disks"][0]["device"], "vda");

    // Pagination: limit, marker, next links, sort.
    let seen = all_pages(
        &member,
        "/v1/backups?limit=2&sort=created_at:asc",
        "backups",
    )
    .await;
    let mut expected = finished.clone();
    expected.push(created.clone());
    assert_eq!(seen, expected, "every backup once, oldest first");
    let (s, _) = member.get("/v1/backups?marker=no-such-backup").await;
    assert_eq!(s, 400);
    let (s, _) = member.get("/v1/backups?limit=0").await;
    assert_eq!(s, 400);
    let (s, _) = member.get("/v1/backups?sort=size:asc").await;
    assert_eq!(s, 400);

    // Protect, refuse the delete, unprotect, delete.
    let old = &finished[0];
    let (s, _, v) = member
        .call(
            "PUT",
            &format!("/v1/backups/{old}"),
            Some(json!({"backup": {"protected": true}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["backup"]["protected"], true);
    let (s, _, _) = member
        .call("DELETE", &format!("/v1/backups/{old}"), None)
        .await;
    assert_eq!(s, 409);
    // Metadata is replaced as a whole, and only by a valid body; the
    // rest of the backup stays as it was.
    let (s, _, v) = member
        .call(
            "PUT",
            &format!("/v1/backups/{old}"),
            Some(json!({"backup": {"metadata": {"ticket": "OPS-7", "tier": 2}}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["backup"]["metadata"],
        json!({"ticket": "OPS-7", "tier": 2})
    );
    assert_eq!(v["backup"]["protected"], true, "{v}");
    let huge = "x".repeat(17 << 10);
    let (s, _, v) = member
        .call(
            "PUT",
            &format!("/v1/backups/{old}"),
            Some(json!({"backup": {"metadata": {"big": huge}, "name": "renamed"}})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    let (_, v) = member.get(&format!("/v1/backups/{old}")).await;
    assert_eq!(
        v["backup"]["metadata"],
        json!({"ticket": "OPS-7", "tier": 2})
    );
    assert_ne!(
        v["backup"]["name"], "renamed",
        "a refused update changes nothing"
    );
    let (s, _, v) = reader
        .call(
            "PUT",
            &format!("/v1/backups/{old}"),
            Some(json!({"backup": {"metadata": {}}})),
        )
        .await;
    assert_eq!(s, 403, "a reader cannot change metadata: {v}");
    member
        .call(
            "PUT",
            &format!("/v1/backups/{old}"),
            Some(json!({"backup": {"protected": false}})),
        )
        .await;
    let (s, _, _) = member
        .call("DELETE", &format!("/v1/backups/{old}"), None)
        .await;
    assert_eq!(s, 202);
    let (s, _) = member.get(&format!("/v1/backups/{old}")).await;
    assert_eq!(s, 404, "a deleted backup is gone");

    // Policies: schedules and retention rules, attached instances.
    let (s, _, v) = member
        .call(
            "POST",
            "/v1/policies",
            Some(json!({"policy": {"name": "nightly", "schedule": "0 2 * * *", "timezone": "Europe/Paris",
                                   "retention": {"keep_daily": 7, "keep_weekly": 4}}})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["policy"]["retention"]["keep_daily"], 7);
    assert_eq!(v["policy"]["retention"]["keep_last"], Value::Null);
    let policy = v["policy"]["id"].as_str().unwrap().to_string();
    let policy_url = format!("/v1/policies/{policy}");
    // Policies and instances are listed in pages too (oldest first).
    let (s, _, v) = member
        .call(
            "POST",
            "/v1/policies",
            Some(json!({"policy": {"name": "weekly"}})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let weekly = v["policy"]["id"].as_str().unwrap().to_string();
    let (_, v) = member.get("/v1/policies?limit=1").await;
    assert_eq!(ids_of(&v, "policies"), vec![policy.clone()], "{v}");
    assert!(v["policies_links"][0]["href"].is_string(), "{v}");
    let paged = all_pages(&member, "/v1/policies?limit=1", "policies").await;
    assert_eq!(paged, vec![policy.clone(), weekly.clone()]);
    let newest = all_pages(
        &member,
        "/v1/policies?limit=1&sort=created_at:desc",
        "policies",
    )
    .await;
    assert_eq!(newest, vec![weekly.clone(), policy.clone()]);
    let (s, _, v) = alt
        .call("GET", &format!("/v1/policies?marker={policy}"), None)
        .await;
    assert_eq!(s, 400, "another project's marker is unknown: {v}");
    let (s, _, _) = member
        .call("DELETE", &format!("/v1/policies/{weekly}"), None)
        .await;
    assert_eq!(s, 204);
    let (_, v) = admin.get("/v1/instances?all_projects=true").await;
    let every = ids_of(&v, "instances");
    assert!(every.len() >= 2, "{v}");
    assert_eq!(
        all_pages(
            &admin,
            "/v1/instances?all_projects=true&limit=1",
            "instances"
        )
        .await,
        every
    );
    let (s, v) = member.get("/v1/instances?marker=inst-alt").await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = member.get("/v1/instances?limit=100000").await;
    assert_eq!(s, 400, "{v}");
    for bad in [
        json!({"policy": {"name": "x", "schedule": "0 25 * * *"}}),
        json!({"policy": {"name": "x", "timezone": "Mars/Base"}}),
        json!({"policy": {"name": "x", "retention": {"keep_daily": -1}}}),
        json!({"policy": {"schedule": "0 2 * * *"}}),
    ] {
        let (s, h, v) = member.call("POST", "/v1/policies", Some(bad)).await;
        assert_eq!(s, 400, "{v}");
        assert_error(s, &h, &v, "bad_request");
    }
    let (s, _, _) = reader
        .call(
            "POST",
            "/v1/policies",
            Some(json!({"policy": {"name": "r"}})),
        )
        .await;
    assert_eq!(s, 403);
    let members_url = format!("{policy_url}/instances");
    let (s, _, v) = member
        .call(
            "POST",
            &members_url,
            Some(json!({"instance_id": "inst-demo"})),
        )
        .await;
    assert_eq!(s, 204, "{v}");
    let (s, _, _) = member
        .call(
            "POST",
            &members_url,
            Some(json!({"instance_id": "inst-alt"})),
        )
        .await;
    assert_eq!(s, 400, "another project's instance does not exist here");
    let (s, v) = reader.get(&policy_url).await;
    assert_eq!(s, 200);
    assert_eq!(v["policy"]["instances"], json!(["inst-demo"]));
    let (_, v) = member.get("/v1/instances/inst-demo").await;
    assert_eq!(v["instance"]["protected"], true);
    assert_eq!(v["instance"]["policy_id"], policy);
    let (s, _) = alt.get(&policy_url).await;
    assert_eq!(s, 404);
    let (s, _, _) = alt.call("DELETE", &policy_url, None).await;
    assert_eq!(s, 404);
    let (s, _, v) = member
        .call(
            "PUT",
            &policy_url,
            Some(json!({"policy": {"schedule": null, "enabled": false}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["policy"]["schedule"], Value::Null);
    assert_eq!(
        v["policy"]["timezone"], "Europe/Paris",
        "untouched fields stay"
    );
    let (s, _, _) = member
        .call("DELETE", &format!("{members_url}/inst-demo"), None)
        .await;
    assert_eq!(s, 204);
    let (s, _, _) = member
        .call("DELETE", &format!("{members_url}/inst-demo"), None)
        .await;
    assert_eq!(s, 404);
    let (s, _, _) = member.call("DELETE", &policy_url, None).await;
    assert_eq!(s, 204);
    let (s, _) = member.get(&policy_url).await;
    assert_eq!(s, 404);

    // Quotas: readers see their project's, admins set them, creating past
    // a limit answers 403 (API-SIG).
    let quota_url = format!("/v1/quotas/{demo_project}");
    let (s, v) = reader.get(&quota_url).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["quota"]["backups"]["in_use"], 5, "{v}");
    assert_eq!(v["quota"]["backups"]["limit"], 1000);
    let (s, _) = alt.get(&quota_url).await;
    assert_eq!(s, 404);
    let (s, _, _) = member
        .call("PUT", &quota_url, Some(json!({"quota": {"backups": 100}})))
        .await;
    assert_eq!(s, 403);
    let (s, _, v) = admin
        .call("PUT", &quota_url, Some(json!({"quota": {"backups": 5}})))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["quota"]["backups"]["limit"], 5);
    let (s, h, v) = member
        .call(
            "POST",
            "/v1/backups",
            Some(json!({"backup": {"instance_id": "inst-demo"}})),
        )
        .await;
    assert_eq!(s, 403, "{v}");
    assert_error(s, &h, &v, "quota_exceeded");
    let (s, _, _) = admin
        .call("PUT", &quota_url, Some(json!({"quota": {"backups": -5}})))
        .await;
    assert_eq!(s, 400);

    // Unknown paths and methods: error bodies too.
    let (s, h, v) = member.call("GET", "/v1/nothing-here", None).await;
    assert_eq!(s, 404);
    assert_error(s, &h, &v, "not_found");
    let (s, h, v) = member.call("PATCH", "/v1/backups", None).await;
    assert_eq!(s, 405);
    assert_error(s, &h, &v, "method_not_allowed");
    assert_eq!(h["allow"], "GET, POST");

    // Each token was validated by Keystone once, then served from the cache.
    let log = std::fs::read_to_string(&api.log).unwrap();
    let validations = log
        .lines()
        .filter(|l| l.contains("token validated by Keystone") && l.contains(&demo_user))
        .count();
    assert_eq!(
        validations, 1,
        "the member's token is validated once per cache period"
    );
}

/// Keystone cannot be reached: 503, not 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keystone_unreachable_answers_503() {
    if service_env("EKKO_KEYSTONE_AUTH_URL").is_none() {
        return;
    }
    let Some(t) = mariadb_db() else { return };
    t.db.sync().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let closed = format!("http://127.0.0.1:{}/v3", free_port());
    let api = start_api(dir.path(), "down", &t.url, &closed).await;
    let r = reqwest::Client::new()
        .get(format!("{}/v1/backups", api.base))
        .header("X-Auth-Token", "some-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["errors"][0]["code"],
        "instance-backup.service_unavailable"
    );
}
