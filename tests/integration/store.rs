//! One object-store suite, run against every backend.

use std::sync::Arc;

use bytes::Bytes;
use ekko::store::local::LocalStore;
use ekko::store::{ObjectStore, StoreError};
use futures::StreamExt;

/// `data` as a stream of 1 MiB parts, then `error` if one is given.
fn in_parts(data: &[u8], error: Option<StoreError>) -> ekko::store::ByteStream {
    let parts: Vec<Result<Bytes, StoreError>> = data
        .chunks(1 << 20)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .chain(error.map(Err))
        .collect();
    futures::stream::iter(parts).boxed()
}

async fn suite(store: Arc<dyn ObjectStore>, container: &str) {
    let data: Vec<u8> = (0..(5 << 20) + 17)
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    store
        .put(container, "segments/00/a", Bytes::from(data.clone()))
        .await
        .unwrap();
    assert_eq!(store.get(container, "segments/00/a").await.unwrap(), data);
    assert_eq!(
        store.head(container, "segments/00/a").await.unwrap().size,
        data.len() as u64
    );
    let r = store
        .get_range(container, "segments/00/a", 4096, 100)
        .await
        .unwrap();
    assert_eq!(&r[..], &data[4096..4196]);
    let bad = store
        .get_range(container, "segments/00/a", data.len() as u64 - 10, 11)
        .await;
    assert!(matches!(bad, Err(StoreError::BadRange { .. })), "{bad:?}");

    // Streaming in and out, larger than one part.
    let n = store
        .put_stream(container, "manifests/m1.json", in_parts(&data, None))
        .await
        .unwrap();
    assert_eq!(n, data.len() as u64);
    let mut streamed = Vec::new();
    let mut s = store
        .get_stream(container, "manifests/m1.json")
        .await
        .unwrap();
    while let Some(part) = s.next().await {
        streamed.extend_from_slice(&part.unwrap());
    }
    assert_eq!(streamed, data);

    // Overwrite is atomic and complete.
    store
        .put(container, "manifests/m1.json", Bytes::from_static(b"v2"))
        .await
        .unwrap();
    assert_eq!(
        store.get(container, "manifests/m1.json").await.unwrap(),
        Bytes::from_static(b"v2")
    );

    store
        .put(container, "segments/01/b", Bytes::from_static(b"b"))
        .await
        .unwrap();
    let names: Vec<String> = store
        .list(container, "segments/")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(names, vec!["segments/00/a", "segments/01/b"]);
    assert_eq!(store.list(container, "").await.unwrap().len(), 3);
    assert_eq!(
        store.list("ekko-empty-container", "").await.unwrap().len(),
        0
    );

    store.delete(container, "segments/00/a").await.unwrap();
    assert!(matches!(
        store.get(container, "segments/00/a").await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.delete(container, "segments/00/a").await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.head(container, "nope").await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.put(container, "../escape", Bytes::new()).await,
        Err(StoreError::InvalidName(_))
    ));
    // A failed stream stores nothing.
    let failing = futures::stream::iter(vec![
        Ok(Bytes::from_static(b"part")),
        Err(StoreError::Unavailable("client went away".into())),
    ])
    .boxed();
    assert!(store
        .put_stream(container, "manifests/half", failing)
        .await
        .is_err());
    assert!(matches!(
        store.head(container, "manifests/half").await,
        Err(StoreError::NotFound { .. })
    ));
    // Containers are found by prefix (the catalog rebuild walks them).
    let prefix = &container[..container.len() - 1];
    let found = store.containers(prefix).await.unwrap();
    assert!(found.iter().any(|c| c == container), "{found:?}");
    assert!(store
        .containers("no-such-prefix-")
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn local_directory_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LocalStore::new(dir.path(), true).unwrap());
    suite(store, "ekko-project-a").await;
    // No temporary files are left behind.
    let leftovers: Vec<_> = walk(dir.path())
        .into_iter()
        .filter(|p| p.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}

/// The same suite against the test environment's Swift, in the Ekko service
/// user's account.
#[tokio::test]
async fn swift_store() {
    let dir = tempfile::tempdir().unwrap();
    let Some(config) = crate::helpers::swift_config(dir.path(), "") else {
        return;
    };
    let store = Arc::new(ekko::store::swift::SwiftStore::new(&config).unwrap());
    let container = format!(
        "ekko-test-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    suite(store.clone(), &container).await;
    for m in store.list(&container, "").await.unwrap() {
        store.delete(&container, &m.name).await.unwrap();
    }
}

/// Swift answering 503 to one request in three: every operation still
/// succeeds, through retries.
#[tokio::test]
async fn swift_store_retries_through_faults() {
    let dir = tempfile::tempdir().unwrap();
    let Some(swift) = crate::helpers::service_env("EKKO_SWIFT_URL") else {
        return;
    };
    let Some(service_project) = crate::helpers::service_env("EKKO_SERVICE_PROJECT_ID") else {
        return;
    };
    let upstream = swift
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let (proxy, requests) = crate::helpers::faulty_proxy(upstream, 3).await;
    let extra = format!(
        "[swift]\nendpoint_override = http://{proxy}/v1/AUTH_{service_project}\nmax_retries = 6\n"
    );
    let config = crate::helpers::swift_config(dir.path(), &extra).unwrap();
    let store = Arc::new(ekko::store::swift::SwiftStore::new(&config).unwrap());
    let container = format!(
        "ekko-test-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    suite(store.clone(), &container).await;
    assert!(
        requests.load(std::sync::atomic::Ordering::SeqCst) > 30,
        "the proxy saw the traffic"
    );
}

// ---- S3 (Swift's s3api in the test environment) ----

fn test_bucket() -> String {
    format!(
        "ekko-test-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Empty a test bucket (the bucket itself stays, as containers do).
async fn empty(store: &dyn ObjectStore, container: &str) {
    for m in store.list(container, "").await.unwrap() {
        store.delete(container, &m.name).await.unwrap();
    }
}

/// Objects above the multipart threshold, whole and streamed, come back
/// bit-exact; a stream that fails after some parts were sent leaves nothing.
async fn multipart(store: &dyn ObjectStore, container: &str) {
    let data: Vec<u8> = (0..(12 << 20) + 3)
        .map(|i: u32| (i.wrapping_mul(40503) >> 7) as u8)
        .collect();
    store
        .put(container, "segments/big", Bytes::from(data.clone()))
        .await
        .unwrap();
    assert_eq!(store.get(container, "segments/big").await.unwrap(), data);
    let n = store
        .put_stream(container, "segments/streamed", in_parts(&data, None))
        .await
        .unwrap();
    assert_eq!(n, data.len() as u64);
    let r = store
        .get_range(container, "segments/streamed", (6 << 20) - 5, 10)
        .await
        .unwrap();
    assert_eq!(&r[..], &data[(6 << 20) - 5..(6 << 20) + 5]);
    let failing = in_parts(
        &data,
        Some(StoreError::Unavailable("client went away".into())),
    );
    assert!(store
        .put_stream(container, "segments/half", failing)
        .await
        .is_err());
    assert!(matches!(
        store.head(container, "segments/half").await,
        Err(StoreError::NotFound { .. })
    ));
}

/// The same suite against S3, and multipart uploads (5 MiB parts).
#[tokio::test]
async fn s3_store() {
    let dir = tempfile::tempdir().unwrap();
    let extra = "multipart_threshold = 5M\nmultipart_part_size = 5M\n";
    let Some(config) = crate::helpers::s3_config(dir.path(), None, extra) else {
        return;
    };
    let store = Arc::new(ekko::store::s3::S3Store::new(&config.s3).unwrap());
    let container = test_bucket();
    suite(store.clone(), &container).await;
    multipart(store.as_ref(), &container).await;
    // Container names S3 cannot hold as buckets are refused, not renamed.
    assert!(matches!(
        store.put("Ekko_Upper", "x", Bytes::new()).await,
        Err(StoreError::InvalidName(_))
    ));
    empty(store.as_ref(), &container).await;
}

/// S3 behind a proxy that answers 503, truncates answers and stalls past
/// the client's timeout: every operation still succeeds, through retries.
#[tokio::test]
async fn s3_store_retries_through_faults() {
    let dir = tempfile::tempdir().unwrap();
    let Some(endpoint) = crate::helpers::service_env("EKKO_S3_ENDPOINT") else {
        return;
    };
    let upstream = endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let faults = crate::helpers::Faults {
        fail_every: 4,
        truncate_every: 7,
        stall_every: 17,
    };
    let (proxy, requests) = crate::helpers::faulty_proxy_with(upstream, faults).await;
    let extra =
        "max_retries = 8\ntimeout = 2\nmultipart_threshold = 5M\nmultipart_part_size = 5M\n";
    let config =
        crate::helpers::s3_config(dir.path(), Some(format!("http://{proxy}")), extra).unwrap();
    let store = Arc::new(ekko::store::s3::S3Store::new(&config.s3).unwrap());
    let container = test_bucket();
    suite(store.clone(), &container).await;
    multipart(store.as_ref(), &container).await;
    empty(store.as_ref(), &container).await;
    assert!(
        requests.load(std::sync::atomic::Ordering::SeqCst) > 40,
        "the proxy saw the traffic"
    );
}
