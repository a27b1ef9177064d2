//! Encryption at rest on the real MariaDB and Swift, with real backups of a
//! qemu-storage-daemon disk: sealed chunks, pages and manifests restore and
//! verify; no plaintext and no plain identity reaches the store; tampered,
//! swapped and truncated objects are detected and named; a wrong or missing
//! master key is refused before anything changes; after a master key
//! rotation (and a catalog rebuild under the new key) every backup
//! restores bit-exact.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;

use ekko::backup::restore::TargetFormat;
use ekko::service::local::{backup_instance, restore_backup, verify_backup};

use crate::qsd::identical;
use crate::retention::{setup, Setup};

const MIB: u64 = 1 << 20;

/// 1 MiB of text no compressor hides and any scan of the store would find.
fn secret(round: u8) -> Vec<u8> {
    let line = format!("EKKO-SECRET-{round:02}-the tenant's data, never in the clear. ");
    line.as_bytes()
        .iter()
        .copied()
        .cycle()
        .take(MIB as usize)
        .collect()
}

fn key_file(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, ekko::crypto::MasterKey::generate_hex().unwrap()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// The same catalog and store under another `[encryption]` section.
async fn connect_with(
    x: &Setup,
    enabled: bool,
    key: Option<&std::path::Path>,
) -> Result<ekko::Ekko, String> {
    let mut config = x.ekko.config.as_ref().clone();
    config.encryption.enabled = enabled;
    config.encryption.master_key_file = key.map(|k| k.display().to_string()).unwrap_or_default();
    ekko::Ekko::connect(config, ekko::ekko::Catalog::Required)
        .await
        .map_err(|e| e.to_string())
}

async fn restores(ekko: &ekko::Ekko, x: &Setup, id: &str, snap: &std::path::Path, what: &str) {
    let out = x.dir.path().join(format!("enc-{id}.raw"));
    restore_backup(ekko, id, None, &out, TargetFormat::Raw, None)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e:#}"));
    assert!(identical(&out, snap), "{what}: restored image differs");
    std::fs::remove_file(&out).unwrap();
}

/// Every stored record's identity, per segment object of `container`.
async fn identities(x: &Setup, container: &str) -> HashSet<ekko::chunk::ChunkDigest> {
    let mut out = HashSet::new();
    for o in x.ekko.store.list(container, "segments/").await.unwrap() {
        let id = u64::from_str_radix(o.name.rsplit('/').next().unwrap(), 16).unwrap();
        let body = x.ekko.store.get(container, &o.name).await.unwrap();
        out.extend(
            ekko::segment::read_whole(id, &body)
                .unwrap()
                .into_iter()
                .map(|e| e.digest),
        );
    }
    out
}

/// What verifying `backups` reports: bad ranges, or the error.
async fn damage(ekko: &ekko::Ekko, backups: &[&String]) -> String {
    let mut out = String::new();
    for id in backups {
        match verify_backup(ekko, id, None).await {
            Ok(v) => {
                out += &format!(
                    "{:?}",
                    v.iter()
                        .flat_map(|(_, s)| s.bad.clone())
                        .collect::<Vec<_>>()
                )
            }
            Err(e) => out += &format!("{e:#}"),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_backups_restore_and_tampering_wrong_keys_and_rotation_are_handled() {
    let keys = tempfile::tempdir().unwrap();
    let master = key_file(keys.path(), "master.key");
    let Some(x) = setup(
        "proj-enc",
        16,
        &format!(
            "[encryption]\nenabled = true\nmaster_key_file = {}\n\
             [backup]\nchunk_size = 64K\nsegment_size = 1M",
            master.display()
        ),
    )
    .await
    else {
        return;
    };
    let snap = |n: &str| x.dir.path().join(format!("snap-{n}.raw"));

    // A full and an incremental backup, restored and verified.
    x.qsd.write(0, 0, &secret(1));
    x.qsd.write(0, 8 * MIB, &secret(2));
    let a = backup_instance(&x.ekko, &x.req).await.unwrap().backup;
    x.qsd.snapshot_to(0, &snap("a"));
    x.qsd.write(0, 4 * MIB, &secret(3));
    let b = backup_instance(&x.ekko, &x.req).await.unwrap().backup;
    x.qsd.snapshot_to(0, &snap("b"));
    assert_eq!(b.kind.as_deref(), Some("incremental"));
    restores(&x.ekko, &x, &a.id, &snap("a"), "A").await;
    restores(&x.ekko, &x, &b.id, &snap("b"), "B").await;
    for id in [&a.id, &b.id] {
        let v = verify_backup(&x.ekko, id, None).await.unwrap();
        assert!(v.iter().all(|(_, s)| s.bad.is_empty()), "{v:?}");
    }

    // Nothing in the clear: no segment or manifest holds the data, the
    // manifests are sealed, and no identity is the plain SHA-256.
    let objects = x.ekko.store.list(&x.container, "").await.unwrap();
    for o in &objects {
        let body = x.ekko.store.get(&x.container, &o.name).await.unwrap();
        assert!(
            !body.windows(12).any(|w| w == b"EKKO-SECRET-"),
            "{} holds plaintext",
            o.name
        );
        if o.name.starts_with("manifests/") {
            assert!(body.starts_with(b"EKKOMNF1"), "{} is not sealed", o.name);
        }
    }
    assert!(objects.iter().any(|o| o.name == ekko::keyring::KEY_OBJECT));
    let ids = identities(&x, &x.container).await;
    let plain = ekko::chunk::ChunkDigest::of(&secret(1)[..64 * 1024]);
    assert!(!ids.contains(&plain), "identities are keyed");
    // Another project backing up the same bytes shares no identity.
    let mut other = x.req.clone();
    other.project_id = "proj-enc2".into();
    other.instance_id = "inst-enc2".into();
    let o = backup_instance(&x.ekko, &other).await.unwrap().backup;
    let other_container = x.container.replace("proj-enc", "proj-enc2");
    let theirs = identities(&x, &other_container).await;
    assert!(
        !theirs.is_empty() && ids.is_disjoint(&theirs),
        "identities are per project"
    );
    restores(&x.ekko, &x, &o.id, &snap("b"), "the other project's backup").await;

    // Tampering, swapping and truncation are detected and named.
    let victim = objects
        .iter()
        .find(|o| o.name.starts_with("segments/"))
        .unwrap()
        .name
        .clone();
    let victim_id = u64::from_str_radix(victim.rsplit('/').next().unwrap(), 16).unwrap();
    let original = x.ekko.store.get(&x.container, &victim).await.unwrap();
    let entries = ekko::segment::read_whole(victim_id, &original).unwrap();
    let e = entries[0];
    // Flip a ciphertext byte and fix the record's crc: only the seal knows.
    let mut forged = original.to_vec();
    let at = e.offset as usize;
    forged[at + ekko::segment::RECORD_HEADER_LEN + 1] ^= 0x40;
    let crc = {
        let mut h = crc32fast::Hasher::new();
        h.update(&forged[at..at + 12]);
        h.update(&[0; 4]);
        h.update(&forged[at + 16..at + e.length as usize]);
        h.finalize()
    };
    forged[at + 12..at + 16].copy_from_slice(&crc.to_le_bytes());
    let broken = |bytes: Vec<u8>| {
        let (store, cont, name) = (x.ekko.store.clone(), x.container.clone(), victim.clone());
        async move { store.put(&cont, &name, bytes.into()).await.unwrap() }
    };
    broken(forged).await;
    let why = damage(&x.ekko, &[&a.id, &b.id]).await;
    assert!(
        why.contains("authentication failed") && why.contains(&format!("{victim_id:016x}")),
        "tampering named: {why}"
    );
    // Swapped: another segment's bytes under this name.
    let donor = objects
        .iter()
        .find(|o| o.name.starts_with("segments/") && o.name != victim)
        .unwrap();
    broken(
        x.ekko
            .store
            .get(&x.container, &donor.name)
            .await
            .unwrap()
            .to_vec(),
    )
    .await;
    let why = damage(&x.ekko, &[&a.id, &b.id]).await;
    assert!(
        why.contains(&format!("{victim_id:016x}")),
        "swap named: {why}"
    );
    // Truncated.
    broken(original[..original.len() - 7].to_vec()).await;
    let why = damage(&x.ekko, &[&a.id, &b.id]).await;
    assert!(
        why.contains(&format!("{victim_id:016x}")),
        "truncation named: {why}"
    );
    broken(original.to_vec()).await;
    restores(&x.ekko, &x, &a.id, &snap("a"), "A after repair").await;

    // A wrong or missing master key is refused at start, by name.
    let stranger = key_file(keys.path(), "stranger.key");
    let err = connect_with(&x, true, Some(&stranger)).await.err().unwrap();
    assert!(err.contains("wrapped by master key"), "{err}");
    let err = connect_with(&x, false, None).await.err().unwrap();
    assert!(err.contains("no master key is configured"), "{err}");
    let err = connect_with(&x, true, None).await.err().unwrap();
    assert!(err.contains("master_key_file"), "{err}");

    // Rotation: project keys rewrapped, data untouched, everything restores
    // under the new key and the old one is refused.
    let new_key = key_file(keys.path(), "new.key");
    let new = ekko::crypto::MasterKey::load(&new_key).unwrap();
    let before: HashSet<String> = x
        .ekko
        .store
        .list(&x.container, "segments/")
        .await
        .unwrap()
        .into_iter()
        .map(|o| format!("{}:{}", o.name, o.size))
        .collect();
    assert_eq!(x.ekko.keyring.rotate(&new).await.unwrap(), 2);
    let rotated = connect_with(&x, true, Some(&new_key)).await.unwrap();
    restores(&rotated, &x, &a.id, &snap("a"), "A after rotation").await;
    restores(&rotated, &x, &b.id, &snap("b"), "B after rotation").await;
    assert!(
        connect_with(&x, true, Some(&master)).await.is_err(),
        "the old key is refused"
    );
    let after: HashSet<String> = x
        .ekko
        .store
        .list(&x.container, "segments/")
        .await
        .unwrap()
        .into_iter()
        .map(|o| format!("{}:{}", o.name, o.size))
        .collect();
    assert_eq!(before, after, "rotation rewrote no data");
    // Backups go on under the new key.
    x.qsd.write(0, 12 * MIB, &secret(4));
    let c = backup_instance(&rotated, &x.req).await.unwrap().backup;
    x.qsd.snapshot_to(0, &snap("c"));
    restores(&rotated, &x, &c.id, &snap("c"), "C under the new key").await;

    // The catalog is lost: a rebuild under the new key reads the store's
    // copy of the project key and every backup restores.
    let t2 = crate::helpers::mariadb_db().unwrap();
    t2.db.sync().unwrap();
    let mut config = rotated.config.as_ref().clone();
    config.database.connection = t2.url.clone();
    let rebuilt = ekko::Ekko::connect(config, ekko::ekko::Catalog::Required)
        .await
        .unwrap();
    let report = ekko::rebuild::rebuild(&rebuilt).await.unwrap();
    assert!(report.skipped.is_empty(), "{report:?}");
    for (id, name) in [(&a.id, "a"), (&b.id, "b"), (&c.id, "c")] {
        restores(&rebuilt, &x, id, &snap(name), "from the rebuilt catalog").await;
    }
}

/// Public-key mode on the real MariaDB and Swift: a host holding only the
/// host key gets write keys that open every index page and no chunk; the
/// restore side (the master key) restores bit-exact; a restore with the
/// write keys is refused before its target exists; the key set-ups that
/// would hand a host the master key are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_key_mode_hosts_write_backups_they_cannot_read() {
    use ekko::backup::reader::RecordReader;
    use ekko::segment::{decode_record, read_whole, RecordExpect, SegmentError};

    let keys = tempfile::tempdir().unwrap();
    let master = key_file(keys.path(), "master.key");
    let host_key = key_file(keys.path(), "host.key");
    let Some(x) = setup(
        "proj-pk",
        16,
        &format!(
            "[encryption]\nenabled = true\nmode = public_key\nmaster_key_file = {}\n\
             host_key_file = {}\n[backup]\nchunk_size = 64K\nsegment_size = 1M",
            master.display(),
            host_key.display()
        ),
    )
    .await
    else {
        return;
    };
    let snap = |n: &str| x.dir.path().join(format!("snap-{n}.raw"));
    x.qsd.write(0, 0, &secret(11));
    let a = backup_instance(&x.ekko, &x.req).await.unwrap().backup;
    x.qsd.snapshot_to(0, &snap("a"));
    x.qsd.write(0, 6 * MIB, &secret(12));
    let b = backup_instance(&x.ekko, &x.req).await.unwrap().backup;
    x.qsd.snapshot_to(0, &snap("b"));
    assert_eq!(b.kind.as_deref(), Some("incremental"));
    restores(&x.ekko, &x, &a.id, &snap("a"), "A on the restore side").await;
    restores(&x.ekko, &x, &b.id, &snap("b"), "B on the restore side").await;

    // What a backup job of this project carries: write keys only.
    let job = x
        .ekko
        .keyring
        .job_keys("proj-pk", "compute-1")
        .await
        .unwrap();
    assert!(job.public_key && job.write_keys.is_some());
    assert!(job.for_backup().0.is_none(), "no project key for hosts");
    // A compute host: host key only, no catalog, no master key.
    let mut host_conf = x.ekko.config.as_ref().clone();
    host_conf.encryption.master_key_file = String::new();
    let host = ekko::Ekko::connect(host_conf.clone(), ekko::ekko::Catalog::None)
        .await
        .unwrap();
    assert!(host.keyring.master_key().is_none());
    let write = host
        .keyring
        .open_job("proj-pk", None, job.write_keys.as_ref())
        .unwrap()
        .unwrap();
    assert!(!write.can_open_chunks());
    // Restore-side keys come from the catalog with the master key.
    let full = x
        .ekko
        .keyring
        .project_keys("proj-pk")
        .await
        .unwrap()
        .unwrap();
    let (mut pages, mut chunks) = (0, 0);
    for o in x.ekko.store.list(&x.container, "segments/").await.unwrap() {
        let id = u64::from_str_radix(o.name.rsplit('/').next().unwrap(), 16).unwrap();
        let body = x.ekko.store.get(&x.container, &o.name).await.unwrap();
        for e in read_whole(id, &body).unwrap() {
            let rec = &body[e.offset as usize..(e.offset + e.length as u64) as usize];
            let expect = RecordExpect::of_kind(e.kind);
            let by_host = decode_record(id, rec, &e.digest, expect, Some(&write));
            assert!(decode_record(id, rec, &e.digest, expect, Some(&full)).is_ok());
            if e.kind == ekko::format::RECORD_INDEX_PAGE {
                assert!(by_host.is_ok(), "the host reads maps");
                pages += 1;
            } else {
                assert_eq!(rec[2], ekko::format::CIPHER_X25519_AES256_GCM);
                assert!(
                    matches!(&by_host, Err(SegmentError::Crypto(m)) if m.contains("restore side")),
                    "a host opened a chunk: {:?}",
                    by_host.map(|p| p.len())
                );
                chunks += 1;
            }
        }
    }
    assert!(pages > 0 && chunks > 0, "{pages} pages, {chunks} chunks");

    // A restore with the write keys fails before its target exists.
    let rec =
        x.db.run({
            let id = b.id.clone();
            move |c| ekko::db::backups::disks_of(c, &id)
        })
        .await
        .unwrap();
    let r = ekko::service::convert::previous_record(&rec[0]).unwrap();
    let reader = RecordReader::new(host.store.clone(), &x.container).with_keys(Some(write));
    let target = x.dir.path().join("host-restore.raw");
    let err = ekko::backup::file_target::restore_to_file(
        &reader,
        &ekko::backup::PreviousRecord {
            root: r.root,
            disk_size: r.disk_size,
            chunk_size: r.chunk_size,
        },
        &target,
        TargetFormat::Raw,
        None,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("restore side"), "{err}");
    assert!(!target.exists(), "the target was not touched");
    // Nor can the host open the project key it does not get.
    let wrapped = job.project_key.clone().unwrap();
    let err = host
        .keyring
        .open_job("proj-pk", Some(&wrapped), None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("no master key"), "{err}");

    // Refused set-ups: the master key as host key; a controller without
    // the host key; a host with neither key.
    let mut same = x.ekko.config.as_ref().clone();
    same.encryption.host_key_file = master.display().to_string();
    let err = ekko::Ekko::connect(same, ekko::ekko::Catalog::None)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("holds the master key"), "{err}");
    let mut controller = x.ekko.config.as_ref().clone();
    controller.encryption.host_key_file = String::new();
    let c = ekko::Ekko::connect(controller, ekko::ekko::Catalog::Required)
        .await
        .unwrap();
    assert!(c.keyring.check_controller().is_err());
    assert!(c.keyring.job_keys("proj-pk", "compute-1").await.is_err());
    // One host key per compute host ([encryption] host_keys_dir): a job's
    // write keys open with its own host's key only; a host without a key
    // file, or with a name that is no file name, gets no job.
    let per_host = tempfile::tempdir().unwrap();
    let key_1 = key_file(per_host.path(), "compute-1.key");
    key_file(per_host.path(), "compute-2.key");
    let mut controller = x.ekko.config.as_ref().clone();
    controller.encryption.host_key_file = String::new();
    controller.encryption.host_keys_dir = per_host.path().display().to_string();
    let c = ekko::Ekko::connect(controller, ekko::ekko::Catalog::Required)
        .await
        .unwrap();
    c.keyring.check_controller().unwrap();
    let for_1 = c.keyring.job_keys("proj-pk", "compute-1").await.unwrap();
    let for_2 = c.keyring.job_keys("proj-pk", "compute-2").await.unwrap();
    let mut conf_1 = host_conf.clone();
    conf_1.encryption.host_key_file = key_1.display().to_string();
    let host_1 = ekko::Ekko::connect(conf_1, ekko::ekko::Catalog::None)
        .await
        .unwrap();
    let own = host_1
        .keyring
        .open_job("proj-pk", None, for_1.write_keys.as_ref());
    assert!(own.is_ok_and(|k| k.is_some()));
    let other = host_1
        .keyring
        .open_job("proj-pk", None, for_2.write_keys.as_ref());
    assert!(other.is_err(), "compute-1's key opens compute-2's job");
    for nowhere in ["compute-3", "../master"] {
        let err = c
            .keyring
            .job_keys("proj-pk", nowhere)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("no host key for host"), "{nowhere}: {err}");
    }
    let mut bare = host_conf;
    bare.encryption.host_key_file = String::new();
    assert!(ekko::Ekko::connect(bare, ekko::ekko::Catalog::None)
        .await
        .is_err());

    // The catalog is lost: a rebuild from the store keeps the mode.
    let t2 = crate::helpers::mariadb_db().unwrap();
    t2.db.sync().unwrap();
    let mut config = x.ekko.config.as_ref().clone();
    config.database.connection = t2.url.clone();
    let rebuilt = ekko::Ekko::connect(config, ekko::ekko::Catalog::Required)
        .await
        .unwrap();
    let report = ekko::rebuild::rebuild(&rebuilt).await.unwrap();
    assert!(report.skipped.is_empty(), "{report:?}");
    restores(
        &rebuilt,
        &x,
        &b.id,
        &snap("b"),
        "B from the rebuilt catalog",
    )
    .await;
    let again = rebuilt
        .keyring
        .job_keys("proj-pk", "compute-1")
        .await
        .unwrap();
    assert!(
        again.public_key,
        "the rebuilt project key is still public-key"
    );
}
