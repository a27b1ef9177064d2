//! The QEMU guest agent, for application-consistent backups: freeze the
//! guest's filesystems around the backup transaction only, with a timeout,
//! and always thaw.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::ExtractError;

pub struct GuestAgent {
    stream: BufReader<UnixStream>,
    timeout: Duration,
}

fn err(e: impl std::fmt::Display) -> ExtractError {
    ExtractError::Agent(e.to_string())
}

impl GuestAgent {
    /// Connect and synchronise (discarding anything stale on the channel).
    pub async fn connect(
        path: impl AsRef<Path>,
        timeout: Duration,
    ) -> Result<GuestAgent, ExtractError> {
        let stream = tokio::time::timeout(timeout, UnixStream::connect(path.as_ref()))
            .await
            .map_err(|_| err("connect timed out"))?
            .map_err(err)?;
        let mut agent = GuestAgent {
            stream: BufReader::new(stream),
            timeout,
        };
        let id: u64 = u64::from(uuid::Uuid::new_v4().as_u128() as u32);
        // 0xFF makes the agent drop any partial input; the delimited sync
        // puts 0xFF before its reply, so everything stale before it (output
        // meant for an earlier client) is skipped.
        let mut line = vec![0xFF];
        line.extend_from_slice(
            &serde_json::to_vec(&json!({
                "execute": "guest-sync-delimited", "arguments": { "id": id }
            }))
            .map_err(err)?,
        );
        line.push(b'\n');
        agent.stream.get_mut().write_all(&line).await.map_err(err)?;
        let timeout = agent.timeout;
        let sync = async {
            loop {
                let mut skipped = Vec::new();
                if agent
                    .stream
                    .read_until(0xFF, &mut skipped)
                    .await
                    .map_err(err)?
                    == 0
                {
                    return Err(err("guest agent closed the connection"));
                }
                let mut reply = Vec::new();
                agent
                    .stream
                    .read_until(b'\n', &mut reply)
                    .await
                    .map_err(err)?;
                let v: Value = match serde_json::from_slice(&reply) {
                    Ok(v) => v,
                    Err(_) => continue,
                };
                if v.get("return").and_then(Value::as_u64) == Some(id) {
                    return Ok(());
                }
            }
        };
        tokio::time::timeout(timeout, sync).await.map_err(|_| {
            err(format!(
                "guest-sync timed out after {} s",
                timeout.as_secs()
            ))
        })??;
        Ok(agent)
    }

    async fn call(&mut self, command: &str, args: Option<Value>) -> Result<Value, ExtractError> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = args {
            msg["arguments"] = a;
        }
        let mut line = serde_json::to_vec(&msg).map_err(err)?;
        line.push(b'\n');
        self.stream.get_mut().write_all(&line).await.map_err(err)?;
        let timeout = self.timeout;
        let read = async {
            let mut buf = Vec::new();
            loop {
                buf.clear();
                if self.stream.read_until(b'\n', &mut buf).await.map_err(err)? == 0 {
                    return Err(err("guest agent closed the connection"));
                }
                let text = buf
                    .iter()
                    .copied()
                    .skip_while(|&c| c == 0xFF)
                    .collect::<Vec<u8>>();
                let Ok(v) = serde_json::from_slice::<Value>(&text) else {
                    continue;
                };
                if let Some(r) = v.get("return") {
                    return Ok(r.clone());
                }
                if let Some(e) = v.get("error") {
                    return Err(err(format!(
                        "{command}: {}",
                        e.get("desc").and_then(Value::as_str).unwrap_or("error")
                    )));
                }
            }
        };
        tokio::time::timeout(timeout, read)
            .await
            .map_err(|_| err(format!("{command} timed out after {} s", timeout.as_secs())))?
    }

    /// Freeze all guest filesystems; returns how many were frozen.
    pub async fn freeze(&mut self) -> Result<u64, ExtractError> {
        Ok(self
            .call("guest-fsfreeze-freeze", None)
            .await?
            .as_u64()
            .unwrap_or(0))
    }

    /// Thaw; retried a few times because a guest left frozen is an outage.
    pub async fn thaw(&mut self) -> Result<u64, ExtractError> {
        let mut last = None;
        for attempt in 0..3 {
            match self.call("guest-fsfreeze-thaw", None).await {
                Ok(v) => return Ok(v.as_u64().unwrap_or(0)),
                Err(e) => {
                    tracing::error!(attempt, error = %e, "guest thaw failed");
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        Err(last.unwrap_or_else(|| err("thaw failed")))
    }
}
