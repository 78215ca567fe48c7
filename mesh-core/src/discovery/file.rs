//! Endpoints from a JSON file that is watched and re-read when it changes.
//!
//! The file is either a list of addresses, `["10.0.0.1:80", "10.0.0.2:80"]`, or a list of
//! objects, `[{"addr": "10.0.0.1:80", "weight": 2, "zone": "a", "identity": "spiffe://td/x"}]`
//! (the two forms may be mixed). Addresses are IP literals: the file is the answer, not
//! another thing to resolve.
//!
//! The parent directory is watched rather than the file, because tools that update
//! files safely write a temporary file and rename it over the old one, and Kubernetes
//! swaps a ConfigMap's `..data` symlink: a watch on the old inode would see neither.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use serde::Deserialize;
use tokio::sync::mpsc;

use super::error::Kind;
use super::publish::Publisher;
use super::{Endpoint, Snapshot};

/// Writers often produce several events for one update (create, write, close, rename);
/// waiting this long after the first one lets them finish, so one update is read once.
const SETTLE: Duration = Duration::from_millis(50);

/// Why a read of the file gave no usable endpoint set.
#[derive(Debug)]
pub(crate) enum ReadError {
    Io(std::io::Error),
    Invalid(String),
}

impl ReadError {
    /// The fixed reason word for the error metric.
    fn reason(&self) -> &'static str {
        match self {
            ReadError::Io(_) => "unreadable",
            ReadError::Invalid(_) => "invalid",
        }
    }
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "{e}"),
            ReadError::Invalid(msg) => f.write_str(msg),
        }
    }
}

/// The object form of one entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryObject {
    addr: String,
    #[serde(default = "default_weight")]
    weight: u32,
    #[serde(default)]
    zone: Option<String>,
    #[serde(default)]
    identity: Option<String>,
}

fn default_weight() -> u32 {
    1
}

fn parse_addr(index: usize, addr: &str) -> Result<SocketAddr, String> {
    addr.trim().parse().map_err(|_| {
        format!(
            "entry {index}: `{addr}` is not an IP address and port such as 10.0.0.1:80 or [::1]:80"
        )
    })
}

/// Parses the file's content. An empty list is valid here; the caller decides what an
/// empty set means.
pub(crate) fn parse(content: &str) -> Result<Snapshot, String> {
    let value: serde_json::Value = serde_json::from_str(content).map_err(|e| {
        format!("not JSON ({e}); expected [\"10.0.0.1:80\", ...] or [{{\"addr\": \"10.0.0.1:80\", \"weight\": 2}}, ...]")
    })?;
    let serde_json::Value::Array(items) = value else {
        return Err("the top level must be a JSON list of endpoints".to_owned());
    };
    let mut endpoints = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        let endpoint = match item {
            serde_json::Value::String(addr) => Endpoint::new(parse_addr(index, &addr)?),
            obj @ serde_json::Value::Object(_) => {
                let entry: EntryObject =
                    serde_json::from_value(obj).map_err(|e| format!("entry {index}: {e}"))?;
                let mut endpoint =
                    Endpoint::new(parse_addr(index, &entry.addr)?).with_weight(entry.weight);
                endpoint.zone = entry.zone.map(Arc::from);
                endpoint.identity = entry.identity.map(Arc::from);
                endpoint
            }
            other => {
                return Err(format!(
                    "entry {index}: expected an address string or an object with \"addr\", found {other}"
                ))
            }
        };
        endpoints.push(endpoint);
    }
    Ok(Snapshot::new(endpoints))
}

/// Reads and parses the file once.
pub(crate) fn read(path: &Path) -> Result<Snapshot, ReadError> {
    let content = std::fs::read_to_string(path).map_err(ReadError::Io)?;
    parse(&content).map_err(ReadError::Invalid)
}

/// Reads the file now (errors are start-up errors), then returns the task that keeps
/// it watched. The watcher lives inside the task and stops when the task is aborted.
pub(crate) fn start(
    path: PathBuf,
    mut publisher: Publisher,
) -> Result<impl std::future::Future<Output = ()> + Send + 'static, Kind> {
    let first = read(&path).map_err(|e| match e {
        ReadError::Io(e) => Kind::FileUnreadable(e),
        ReadError::Invalid(msg) => Kind::FileInvalid(msg),
    })?;

    let (tx, mut rx) = mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let relevant = match &event {
            // Opening or reading the file (our own reads included) changes nothing.
            Ok(ev) => !matches!(
                ev.kind,
                EventKind::Access(notify::event::AccessKind::Open(_))
                    | EventKind::Access(notify::event::AccessKind::Read)
                    | EventKind::Access(notify::event::AccessKind::Close(
                        notify::event::AccessMode::Read
                    ))
            ),
            // A watcher error may have lost events: read again to be sure.
            Err(_) => true,
        };
        if relevant {
            // A full channel already holds a pending re-read.
            let _ = tx.try_send(());
        }
    })
    .map_err(Kind::Watch)?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(Kind::Watch)?;

    apply(&mut publisher, Ok(first));

    Ok(async move {
        let _watcher = watcher;
        while rx.recv().await.is_some() {
            tokio::time::sleep(SETTLE).await;
            while rx.try_recv().is_ok() {}
            // Other files in the directory also wake us; an unchanged set publishes
            // nothing, so that costs one small read.
            apply(&mut publisher, read(&path));
        }
    })
}

fn apply(publisher: &mut Publisher, result: Result<Snapshot, ReadError>) {
    match result {
        Ok(snapshot) if snapshot.is_empty() => {
            publisher.failed("empty", &"the endpoints file lists no endpoints")
        }
        Ok(snapshot) => publisher.good(snapshot),
        Err(e) => publisher.failed(e.reason(), &e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_parses_plain_and_object_forms() {
        let snap = parse(r#"["10.0.0.2:80", "10.0.0.1:80"]"#).unwrap();
        assert_eq!(snap.len(), 2);
        assert_eq!(snap.endpoints()[0].addr, "10.0.0.1:80".parse().unwrap());

        let snap = parse(
            r#"[{"addr":"10.0.0.1:80","weight":2,"zone":"a","identity":"spiffe://td/x"}, "[::1]:81"]"#,
        )
        .unwrap();
        let e = &snap.endpoints()[0];
        assert_eq!(e.weight, 2);
        assert_eq!(e.zone.as_deref(), Some("a"));
        assert_eq!(e.identity.as_deref(), Some("spiffe://td/x"));
        assert_eq!(snap.endpoints()[1].weight, 1);
    }

    #[test]
    fn file_errors_name_the_entry_and_the_expected_form() {
        let err = parse(r#"["10.0.0.1:80", "orders:80"]"#).unwrap_err();
        assert!(
            err.contains("entry 1") && err.contains("`orders:80`"),
            "{err}"
        );
        let err = parse(r#"[{"addr":"10.0.0.1:80","wieght":2}]"#).unwrap_err();
        assert!(err.contains("entry 0") && err.contains("wieght"), "{err}");
        let err = parse("not json").unwrap_err();
        assert!(err.contains("expected [\"10.0.0.1:80\""), "{err}");
        let err = parse(r#"{"addr":"10.0.0.1:80"}"#).unwrap_err();
        assert!(err.contains("top level"), "{err}");
    }
}
