//! A scripted QMP peer: the client must not stumble on events it does not
//! know, events before replies, or unknown fields, and must report QEMU's
//! error class and description.

use std::time::Duration;

use ekko::qmp::QmpClient;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

#[tokio::test]
async fn unknown_events_and_interleaving_do_not_disturb_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qmp.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let server = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let (r, mut w) = s.into_split();
        let mut lines = BufReader::new(r).lines();
        w.write_all(
            b"{\"QMP\": {\"version\": {\"qemu\": {\"major\": 42}}, \"capabilities\": [\"oob\"]}}\n",
        )
        .await
        .unwrap();
        while let Some(line) = lines.next_line().await.unwrap() {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            let id = v["id"].clone();
            match v["execute"].as_str().unwrap() {
                "qmp_capabilities" => {
                    w.write_all(format!("{{\"return\": {{}}, \"id\": {id}}}\n").as_bytes())
                        .await
                        .unwrap();
                }
                "query-jobs" => {
                    // Unknown event and a known event with a status from the future, before the reply.
                    w.write_all(b"{\"event\": \"NETDEV_VHOST_USER_CONNECTED\", \"data\": {\"netdev-id\": \"n0\"}, \"timestamp\": {\"seconds\": 1, \"microseconds\": 2}}\n").await.unwrap();
                    w.write_all(b"{\"event\": \"JOB_STATUS_CHANGE\", \"data\": {\"id\": \"j\", \"status\": \"hyperspace\"}, \"timestamp\": {\"seconds\": 1, \"microseconds\": 3}}\n").await.unwrap();
                    w.write_all(b"this line is garbage\n").await.unwrap();
                    w.write_all(format!("{{\"return\": [{{\"id\": \"j\", \"status\": \"hyperspace\", \"new-field\": 1}}], \"id\": {id}}}\n").as_bytes()).await.unwrap();
                }
                "block-dirty-bitmap-add" => {
                    w.write_all(format!("{{\"error\": {{\"class\": \"GenericError\", \"desc\": \"Bitmap already exists: b\"}}, \"id\": {id}}}\n").as_bytes()).await.unwrap();
                }
                "slow" => {} // never answered
                _ => {}
            }
        }
    });
    let qmp = QmpClient::connect(&path, Duration::from_secs(5))
        .await
        .unwrap();
    let mut events = qmp.subscribe();
    let jobs = ekko::qmp::commands::jobs(&qmp).await.unwrap();
    assert_eq!(jobs, vec![("j".to_string(), "hyperspace".to_string())]);
    let e1 = events.recv().await.unwrap();
    assert_eq!(e1.name, "NETDEV_VHOST_USER_CONNECTED");
    let e2 = events.recv().await.unwrap();
    assert_eq!(e2.str("status"), Some("hyperspace"));
    let err = qmp
        .execute(
            "block-dirty-bitmap-add",
            Some(serde_json::json!({"node": "d", "name": "b"})),
        )
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("block-dirty-bitmap-add")
            && msg.contains("GenericError")
            && msg.contains("already exists"),
        "{msg}"
    );
    let err = qmp
        .execute_with_timeout("slow", None, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("timed out"), "{err}");
    // Still usable after a timeout.
    assert_eq!(ekko::qmp::commands::jobs(&qmp).await.unwrap().len(), 1);
    server.abort();
}

/// A scripted guest agent: stale output before the sync is skipped, the
/// freeze and the thaw are sent, and a dead agent times out instead of
/// hanging the backup.
#[tokio::test]
async fn guest_agent_freeze_and_thaw() {
    use ekko::extract::agent::GuestAgent;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qga.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let server = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let (r, mut w) = s.into_split();
        let mut r = BufReader::new(r);
        w.write_all(b"{\"return\": \"stale output from an earlier client\"}\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        loop {
            buf.clear();
            if r.read_until(b'\n', &mut buf).await.unwrap() == 0 {
                break;
            }
            let text: Vec<u8> = buf.iter().copied().filter(|&c| c != 0xFF).collect();
            let v: serde_json::Value = serde_json::from_slice(&text).unwrap();
            let cmd = v["execute"].as_str().unwrap().to_string();
            tx.send(cmd.clone()).unwrap();
            let reply = match cmd.as_str() {
                "guest-sync-delimited" => {
                    // A raw 0xFF byte precedes the reply, as QGA sends it.
                    w.write_all(&[0xFF]).await.unwrap();
                    format!("{{\"return\": {}}}\n", v["arguments"]["id"])
                }
                "guest-fsfreeze-freeze" => "{\"return\": 2}\n".to_string(),
                "guest-fsfreeze-thaw" => "{\"return\": 2}\n".to_string(),
                _ => {
                    "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"no\"}}\n".to_string()
                }
            };
            w.write_all(reply.as_bytes()).await.unwrap();
        }
    });
    let mut agent = GuestAgent::connect(&path, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(agent.freeze().await.unwrap(), 2);
    assert_eq!(agent.thaw().await.unwrap(), 2);
    drop(agent);
    let mut seen = Vec::new();
    while let Ok(c) = rx.try_recv() {
        seen.push(c);
    }
    assert_eq!(
        seen,
        vec![
            "guest-sync-delimited",
            "guest-fsfreeze-freeze",
            "guest-fsfreeze-thaw"
        ]
    );
    server.abort();

    // An agent that never answers: a clear error within the timeout.
    let silent = dir.path().join("silent.sock");
    let l2 = UnixListener::bind(&silent).unwrap();
    let hold = tokio::spawn(async move {
        let (_s, _) = l2.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let err = GuestAgent::connect(&silent, Duration::from_millis(300))
        .await
        .err()
        .expect("times out");
    assert!(err.to_string().contains("timed out"), "{err}");
    hold.abort();
}
