//! QMP messages, parsed tolerantly from JSON (no I/O here).

use serde_json::Value;

/// One line from the server.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// The greeting (`{"QMP": {...}}`).
    Greeting(Value),
    /// A successful reply.
    Return { id: Option<u64>, value: Value },
    /// A failed command: QEMU's error class and description.
    Error {
        id: Option<u64>,
        class: String,
        desc: String,
    },
    /// An asynchronous event.
    Event(Event),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub name: String,
    pub data: Value,
    /// Seconds since the epoch, as QEMU stamped it.
    pub timestamp: f64,
}

impl Event {
    /// A string field of `data`, e.g. `status` or `id`.
    pub fn str(&self, field: &str) -> Option<&str> {
        self.data.get(field).and_then(Value::as_str)
    }
}

/// Classify one line. `None` for a line that is not a JSON object QMP could
/// send (logged and skipped by the client, never fatal).
pub fn parse_line(line: &[u8]) -> Option<Message> {
    let v: Value = serde_json::from_slice(line).ok()?;
    let obj = v.as_object()?;
    let id = obj.get("id").and_then(Value::as_u64);
    if let Some(ret) = obj.get("return") {
        return Some(Message::Return {
            id,
            value: ret.clone(),
        });
    }
    if let Some(err) = obj.get("error") {
        return Some(Message::Error {
            id,
            class: err
                .get("class")
                .and_then(Value::as_str)
                .unwrap_or("GenericError")
                .to_string(),
            desc: err
                .get("desc")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        });
    }
    if let Some(name) = obj.get("event").and_then(Value::as_str) {
        let ts = obj.get("timestamp");
        let secs = ts
            .and_then(|t| t.get("seconds"))
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        let micros = ts
            .and_then(|t| t.get("microseconds"))
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        return Some(Message::Event(Event {
            name: name.to_string(),
            data: obj.get("data").cloned().unwrap_or(Value::Null),
            timestamp: secs + micros / 1e6,
        }));
    }
    if obj.contains_key("QMP") {
        return Some(Message::Greeting(v.clone()));
    }
    None
}

/// The command line to send.
pub fn command_line(id: u64, execute: &str, arguments: Option<&Value>) -> Vec<u8> {
    let mut msg = serde_json::json!({ "execute": execute, "id": id });
    if let Some(args) = arguments {
        if !args.is_null() && args.as_object().is_none_or(|o| !o.is_empty()) {
            msg["arguments"] = args.clone();
        }
    }
    let mut line = serde_json::to_vec(&msg).unwrap_or_default();
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_replies_errors_and_unknown_events() {
        let m = parse_line(br#"{"return": {}, "id": 3}"#).unwrap();
        assert_eq!(
            m,
            Message::Return {
                id: Some(3),
                value: serde_json::json!({})
            }
        );
        let m = parse_line(br#"{"id": 4, "error": {"class": "GenericError", "desc": "Bitmap already exists: ekko-1"}}"#).unwrap();
        assert!(
            matches!(m, Message::Error { id: Some(4), ref desc, .. } if desc.contains("already exists"))
        );
        // An event this code has never heard of, with a status from the future.
        let m = parse_line(br#"{"event": "NETDEV_VHOST_USER_CONNECTED", "data": {"status": "quantum"}, "timestamp": {"seconds": 10, "microseconds": 500000}}"#).unwrap();
        match m {
            Message::Event(e) => {
                assert_eq!(e.name, "NETDEV_VHOST_USER_CONNECTED");
                assert_eq!(e.str("status"), Some("quantum"));
                assert!((e.timestamp - 10.5).abs() < 1e-9);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_line(br#"{"QMP": {"version": {}}}"#),
            Some(Message::Greeting(_))
        ));
        assert!(parse_line(b"not json").is_none());
        assert!(parse_line(b"[1,2]").is_none());
    }

    #[test]
    fn command_lines() {
        let l = command_line(7, "query-jobs", None);
        assert_eq!(l, b"{\"execute\":\"query-jobs\",\"id\":7}\n");
        let l = command_line(8, "job-dismiss", Some(&serde_json::json!({"id": "j"})));
        let v: Value = serde_json::from_slice(&l).unwrap();
        assert_eq!(v["arguments"]["id"], "j");
    }
}
