use super::*;
use std::io::Write;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    let mut f = std::fs::File::create(&p).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    p
}

fn no_env() -> Vec<(String, String)> {
    vec![]
}

#[test]
fn defaults_are_the_embedded_configuration() {
    let cfg = EkkoConfig::load(&[], no_env()).unwrap();
    assert_eq!(cfg.default.transport_url, "memory://");
    assert_eq!(
        cfg.database.connection,
        "sqlite:////var/lib/ekko/ekko.sqlite"
    );
    assert_eq!(cfg.storage.backend, StorageBackend::Local);
    assert_eq!(cfg.local_store.path, "/var/lib/ekko/store");
    assert!(!cfg.default.host.is_empty());
}

#[test]
fn later_files_win_and_substitution_follows_state_path() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(
        dir.path(),
        "a.conf",
        "[DEFAULT]\nstate_path = /srv/ekko\ndebug = True\n[api]\nbind_port = 7000\n",
    );
    let b = write(dir.path(), "b.conf", "[api]\nbind_port = 7001\n");
    let cfg = EkkoConfig::load(&[a, b], no_env()).unwrap();
    assert_eq!(cfg.api.bind_port, 7001);
    assert!(cfg.default.debug);
    assert_eq!(cfg.local_store.path, "/srv/ekko/store");
    assert_eq!(cfg.database.connection, "sqlite:////srv/ekko/ekko.sqlite");
}

#[test]
fn environment_reaches_default_section() {
    let env = vec![
        ("EKKO__DEFAULT__DEBUG".to_string(), "yes".to_string()),
        ("EKKO__API__BIND_PORT".to_string(), "7100".to_string()),
        ("UNRELATED".to_string(), "x".to_string()),
    ];
    let cfg = EkkoConfig::load(&[], env).unwrap();
    assert!(cfg.default.debug);
    assert_eq!(cfg.api.bind_port, 7100);
}

#[test]
fn unknown_key_names_file_line_section_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "ekko.conf", "[api]\n\nbind_prot = 1\n");
    let err = EkkoConfig::load(std::slice::from_ref(&a), no_env())
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("{}:3", a.display())), "{err}");
    assert!(err.contains("[api]") && err.contains("bind_prot"), "{err}");
}

#[test]
fn unknown_section_is_an_error_but_foreign_ones_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a.conf", "[databse]\nconnection = x\n");
    let err = EkkoConfig::load(&[a], no_env()).unwrap_err().to_string();
    assert!(err.contains("unknown section [databse]"), "{err}");
    let b = write(
        dir.path(),
        "b.conf",
        "[oslo_messaging_rabbit]\nheartbeat_rate = 2\n[api]\nbind_port = 1\n",
    );
    assert_eq!(EkkoConfig::load(&[b], no_env()).unwrap().api.bind_port, 1);
}

/// What kolla-ansible writes into a service's file beside the service's
/// own options (oslo.log, keystonemiddleware's memcache keys, ...).
const KOLLA_STYLE: &str = "[DEFAULT]\ndebug = False\nlog_dir = /var/log/kolla/ekko\nuse_stderr = False\n\
    transport_url = rabbit://openstack:secret@192.0.2.10:5672//\n\
    [keystone_authtoken]\nservice_type = instance-backup\nwww_authenticate_uri = http://192.0.2.10:5000\n\
    auth_url = http://192.0.2.10:5000\nauth_type = password\nusername = ekko\npassword = x\n\
    memcache_security_strategy = ENCRYPT\nmemcache_secret_key = s3cr3t\nmemcached_servers = 192.0.2.10:11211\n\
    service_token_roles_required = True\n\
    [oslo_messaging_notifications]\ndriver = noop\n[oslo_middleware]\nenable_proxy_headers_parsing = True\n";

#[test]
fn other_libraries_keys_are_ignored_with_a_note_and_refused_when_strict() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "kolla.conf", KOLLA_STYLE);
    let cfg = EkkoConfig::load(std::slice::from_ref(&f), no_env()).unwrap();
    assert_eq!(cfg.keystone_authtoken.username.as_deref(), Some("ekko"));
    assert!(cfg.default.transport_url.starts_with("rabbit://"));
    for key in [
        "use_stderr",
        "service_type",
        "memcache_secret_key",
        "memcached_servers",
        "driver",
    ] {
        assert!(
            cfg.ignored
                .iter()
                .any(|l| l.contains(&format!("] {key} ignored"))),
            "{key} not noted: {:?}",
            cfg.ignored
        );
    }
    assert!(
        cfg.ignored.iter().any(|l| l.contains("kolla.conf:4")),
        "{:?}",
        cfg.ignored
    );
    let err = EkkoConfig::load_checked(&[f], no_env(), Strictness::Strict)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unknown option \"use_stderr\" in section [DEFAULT]"),
        "{err}"
    );
    // A key no library owns is an error even when tolerant.
    let g = write(
        dir.path(),
        "typo.conf",
        "[keystone_authtoken]\nmemcache_secret_kye = x\n",
    );
    let err = EkkoConfig::load(&[g], no_env()).unwrap_err().to_string();
    assert!(err.contains("memcache_secret_kye"), "{err}");
}

#[test]
fn oslo_environment_overrides_and_ekko_ones_win() {
    let env = vec![
        ("OS_DEFAULT__DEBUG".to_string(), "true".to_string()),
        ("OS_API__BIND_PORT".to_string(), "7100".to_string()),
        ("EKKO__API__BIND_PORT".to_string(), "7200".to_string()),
        ("OS_DATABASE__MAX_POOL_SIZE".to_string(), "3".to_string()),
        // The openstack CLI's variables and other services' options.
        ("OS_AUTH_URL".to_string(), "http://keystone".to_string()),
        ("OS_NOVA__ENDPOINT".to_string(), "x".to_string()),
    ];
    let cfg = EkkoConfig::load(&[], env.clone()).unwrap();
    assert!(cfg.default.debug);
    assert_eq!(cfg.api.bind_port, 7200);
    assert_eq!(cfg.database.max_pool_size, 3);
    assert_eq!(cfg.ignored.len(), 1, "{:?}", cfg.ignored);
    assert!(cfg.ignored[0].contains("OS_NOVA__ENDPOINT"));
    let err = EkkoConfig::load_checked(&[], env, Strictness::Strict)
        .unwrap_err()
        .to_string();
    assert!(err.contains("OS_NOVA__ENDPOINT"), "{err}");
    // A bad value in an OS_ variable names it.
    let bad = vec![("OS_API__BIND_PORT".to_string(), "port".to_string())];
    let err = EkkoConfig::load(&[], bad).unwrap_err().to_string();
    assert!(err.contains("OS_API__BIND_PORT"), "{err}");
}

#[test]
fn bad_values_name_file_section_key_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[api]\nbind_port = 99999\n", "bind_port", "integer"),
        ("[DEFAULT]\ndebug = maybe\n", "debug", "boolean"),
        (
            "[storage]\nbackend = s4\n",
            "backend",
            "one of local, swift, s3",
        ),
        ("[backup]\nchunk_size = 3K\n", "chunk_size", "power of two"),
        ("[backup]\nsegment_size = lots\n", "segment_size", "size"),
        (
            "[database]\nconnection = postgres://x/y\n",
            "connection",
            "mysql",
        ),
        (
            "[DEFAULT]\ntransport_url = kafka://h\n",
            "transport_url",
            "rabbit",
        ),
        (
            "[retention]\ngc_grace_period = 3600\n",
            "gc_grace_period",
            "job_timeout",
        ),
        (
            "[retention]\nretire_after = 60\n",
            "retire_after",
            "three heartbeats",
        ),
    ];
    for (i, (text, key, reason)) in cases.iter().enumerate() {
        let p = write(dir.path(), &format!("c{i}.conf"), text);
        let err = EkkoConfig::load(std::slice::from_ref(&p), no_env())
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{text:?} -> {err}");
        assert!(err.contains(reason), "{text:?} -> {err}");
    }
    let err = EkkoConfig::load(&[], vec![("EKKO__API__BIND_PORT".into(), "http".into())])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bind_port") && err.contains("integer"),
        "{err}"
    );
    let err = EkkoConfig::load(&[], vec![("EKKO__API__NOPE".into(), "1".into())])
        .unwrap_err()
        .to_string();
    assert!(err.contains("EKKO__API__NOPE"), "{err}");
}

#[test]
fn missing_file_and_syntax_errors_are_clear() {
    let err = EkkoConfig::load(&[PathBuf::from("/nonexistent/ekko.conf")], no_env())
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/ekko.conf"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "bad.conf", "[api]\nthis is not an assignment\n");
    let err = EkkoConfig::load(&[p], no_env()).unwrap_err().to_string();
    assert!(err.contains("bad.conf") && err.contains("line 2"), "{err}");
}

#[test]
fn config_dir_files_are_read_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "20-b.conf", "[api]\nbind_port = 2\n");
    write(dir.path(), "10-a.conf", "[api]\nbind_port = 1\n");
    write(dir.path(), "ignored.txt", "garbage");
    let args = ConfigArgs {
        config_file: vec![],
        config_dir: vec![dir.path().to_path_buf()],
        ..Default::default()
    };
    assert_eq!(args.load_with_env(no_env()).unwrap().api.bind_port, 2);
}

#[test]
fn substitution_escapes_and_loops() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "a.conf",
        "[keystone_authtoken]\npassword = pa$$word\nusername = ${api.bind_host}\n",
    );
    let cfg = EkkoConfig::load(&[p], no_env()).unwrap();
    assert_eq!(cfg.keystone_authtoken.password.expose(), "pa$word");
    assert_eq!(cfg.keystone_authtoken.username.as_deref(), Some("0.0.0.0"));
    let q = write(dir.path(), "b.conf", "[DEFAULT]\nstate_path = $nosuch/x\n");
    let err = EkkoConfig::load(&[q], no_env()).unwrap_err().to_string();
    assert!(err.contains("nosuch"), "{err}");
}

#[test]
fn passwords_are_hidden_from_every_url_form() {
    assert_eq!(
        redact_url("mysql+pymysql://ekko:s3cret@db/ekko"),
        "mysql+pymysql://ekko:****@db/ekko"
    );
    let several = redact_url("rabbit://ekko:pw1@h1:5672,other:pw2@h2:5672/vhost");
    assert_eq!(
        several,
        "rabbit://ekko:****@h1:5672,other:****@h2:5672/vhost"
    );
    let odd = redact_url("rabbit://ekko:p/w,x@h1:5672,h2:5672/");
    assert!(!odd.contains("p/w"), "{odd}");
    assert_eq!(redact_url("not a url with :pw@"), "<unreadable URL>");
}

#[test]
fn a_second_store_has_its_own_sections_and_must_be_another_store() {
    let dir = tempfile::tempdir().unwrap();
    let load = |text: &str| {
        let p = write(dir.path(), "r.conf", text);
        EkkoConfig::load(&[p], no_env())
    };
    // The `[s3]` options under `[replica_s3]`, typed and checked the same.
    let cfg = load(
        "[replication]\nbackend = s3\nname = dr-site\n[replica_s3]\nendpoint = http://s3.dr:8080\n\
         access_key = AK\nsecret_key = SK\nmultipart_part_size = 8M\n",
    )
    .unwrap();
    assert_eq!(cfg.replication.backend, ReplicaBackend::S3);
    assert_eq!(cfg.replica_s3.0.endpoint, "http://s3.dr:8080");
    assert_eq!(cfg.replica_s3.0.multipart_part_size.bytes(), 8 << 20);
    assert_eq!(
        cfg.s3.endpoint, "",
        "the first store's section is untouched"
    );
    let err = load("[replica_s3]\nmultipart_part_size = lots\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("[replica_s3] multipart_part_size"), "{err}");
    // The default directory of `[replica_local_store]` is the first store's.
    let err = load("[replication]\nbackend = local\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("the second store is the first one"), "{err}");
    load("[replication]\nbackend = local\n[replica_local_store]\npath = /srv/dr\n").unwrap();
    let err = load(
        "[storage]\nbackend = s3\n[s3]\nendpoint = http://s3:80\naccess_key = A\n\
         [replication]\nbackend = s3\n[replica_s3]\nendpoint = http://s3:80/\naccess_key = A\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("the second store is the first one"), "{err}");
    let err = load("[replication]\nbackend = s3\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("[replica_s3] endpoint"), "{err}");
    // Buckets are named after the containers: a prefix S3 cannot hold.
    let err = load(
        "[swift]\ncontainer_prefix = Ekko_\n[replication]\nbackend = s3\n\
         [replica_s3]\nendpoint = http://dr:80\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("[swift] container_prefix"), "{err}");
    for bad in ["", "two words", "a/b"] {
        let err = load(&format!("[replication]\nname = {bad}\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("[replication] name"), "{bad:?}: {err}");
    }
    // Listed in the sample.
    let sample = crate::config::sample::generate();
    assert!(sample.contains("[replica_s3]") && sample.contains("[replica_local_store]"));
}
