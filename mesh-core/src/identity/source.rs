//! The current identity, swapped atomically on rotation.

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::{mpsc, oneshot, watch};

use super::snapshot::Identity;
use super::{IdentityError, IdentityFiles, TrustDomain};
use crate::metric_names::{self, label};

/// How long the files must stay quiet before a reload: writers (cert-manager,
/// `cp`, editors) touch the cert, key and bundle one after another.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// Re-read the files this often even without a change event: inotify misses
/// changes on some volumes (NFS, some container mounts). A re-read of unchanged
/// files is cheap and changes nothing.
const POLL_INTERVAL: Duration = Duration::from_secs(60);

/// How long after [`IdentitySource::watch`] the directories are registered and
/// the files compared: start-up is over by then. Done at once, it spawned a
/// blocking thread and re-read the files while the service made its first
/// connections, competing with them for the cores (`compare cold-starts`,
/// BENCHMARKS.md). A change meanwhile is caught by the comparison.
pub(crate) const REGISTER_AFTER: Duration = Duration::from_secs(1);

/// Holds the current [`Identity`] and swaps in a new one when its files change.
///
/// Cloning is cheap and every clone sees the same identity. Readers
/// ([`current`](Self::current)) never block; a reload validates the whole new
/// set first and keeps the last good identity when the new one is bad, so a
/// half-written file never reaches a handshake.
#[derive(Debug, Clone)]
pub struct IdentitySource {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    current: ArcSwap<Identity>,
    files: Option<IdentityFiles>,
    generation: watch::Sender<u64>,
    /// For a source fed by a task (the Workload API stream): dropped with the
    /// last clone, which tells the task to stop.
    _stop: Option<oneshot::Sender<()>>,
}

/// What a reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// The files held a new identity, now current.
    Rotated,
    /// The files hold what is already loaded; nothing changed.
    Unchanged,
}

impl IdentitySource {
    /// Loads the identity from its files now; an error here is a start-up error.
    pub fn from_files(files: IdentityFiles) -> Result<Self, IdentityError> {
        let identity = files.load()?;
        Ok(Self::build(identity, Some(files)))
    }

    /// Connects to the SPIFFE Workload API (a SPIRE agent, say) and waits up to
    /// `config.startup_timeout` for the first valid X.509 SVID; then follows the
    /// stream for as long as the source (or a clone) lives. Needs a tokio runtime.
    ///
    /// Every update is validated like [`IdentityFiles::load`] validates files
    /// and swapped in whole; an invalid update is refused and counted
    /// (`mesh.config.reloads{mesh.source="workload_api", mesh.outcome="rejected"}`),
    /// keeping the last good identity. A broken stream keeps the identity in
    /// force too, is counted (`mesh.outcome="error"`), logged once per outage,
    /// and reopened with backoff (100 ms doubling to 5 s).
    ///
    /// Errors: [`IdentityError::WorkloadApiAddress`] for an address that is not
    /// `unix:`/`tcp:`, [`IdentityError::WorkloadApiTimeout`] (naming the socket
    /// and the last problem seen) when no valid SVID arrives in time.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), mesh_core::identity::IdentityError> {
    /// use mesh_core::identity::{IdentitySource, WorkloadApiConfig};
    /// let config = WorkloadApiConfig::new("unix:///run/spire/agent.sock");
    /// let source = IdentitySource::from_workload_api(&config).await?;
    /// println!("we are {}", source.current().spiffe_id());
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "workload-api")]
    pub async fn from_workload_api(
        config: &super::WorkloadApiConfig,
    ) -> Result<Self, IdentityError> {
        super::workload_api::start(config).await
    }

    /// A source holding a fixed identity (for identities obtained elsewhere).
    pub fn from_identity(identity: Identity) -> Self {
        Self::build(identity, None)
    }

    fn build(identity: Identity, files: Option<IdentityFiles>) -> Self {
        Self::build_with(identity, files, None)
    }

    /// A source that a task keeps current with [`replace`](Self::replace); the
    /// task holds a [`WeakSource`] and `stop` closes when the last clone drops.
    #[cfg_attr(not(feature = "workload-api"), allow(dead_code))]
    pub(crate) fn pushed(identity: Identity, stop: oneshot::Sender<()>) -> Self {
        Self::build_with(identity, None, Some(stop))
    }

    fn build_with(
        identity: Identity,
        files: Option<IdentityFiles>,
        stop: Option<oneshot::Sender<()>>,
    ) -> Self {
        record_expiry(&identity);
        Self {
            inner: Arc::new(Inner {
                current: ArcSwap::from_pointee(identity),
                files,
                generation: watch::Sender::new(0),
                _stop: stop,
            }),
        }
    }

    /// A handle that does not keep the source alive.
    #[cfg_attr(not(feature = "workload-api"), allow(dead_code))]
    pub(crate) fn downgrade(&self) -> WeakSource {
        WeakSource(Arc::downgrade(&self.inner))
    }

    /// The identity in force now. Cheap; take it once per handshake.
    pub fn current(&self) -> Arc<Identity> {
        self.inner.current.load_full()
    }

    /// Our own trust domain (the default expectation for peers when no
    /// identity is configured for a service).
    pub fn own_trust_domain(&self) -> TrustDomain {
        self.inner.current.load().trust_domain()
    }

    /// How many times the identity was rotated since start.
    pub fn generation(&self) -> u64 {
        *self.inner.generation.borrow()
    }

    /// A receiver that changes on each rotation, so connection pools can retire
    /// connections made with the old certificate.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.generation.subscribe()
    }

    /// Makes `identity` current (for sources that push identities).
    pub fn replace(&self, identity: Identity) {
        record_expiry(&identity);
        self.inner.current.store(Arc::new(identity));
        self.inner.generation.send_modify(|g| *g += 1);
    }

    /// Re-reads the files. A bad set is rejected (and counted) and the current
    /// identity stays; a source without files is always unchanged.
    pub fn reload(&self) -> Result<Reload, IdentityError> {
        let Some(files) = &self.inner.files else {
            return Ok(Reload::Unchanged);
        };
        let outcome = match files.load() {
            Ok(new) if new.same_material(&self.inner.current.load()) => Ok(Reload::Unchanged),
            Ok(new) => {
                tracing::info!(
                    spiffe_id = %new.spiffe_id(),
                    serial = new.serial(),
                    "identity rotated"
                );
                self.replace(new);
                Ok(Reload::Rotated)
            }
            Err(error) => {
                tracing::warn!(%error, "identity reload rejected; keeping the last good identity");
                Err(error)
            }
        };
        if !matches!(outcome, Ok(Reload::Unchanged)) {
            let word = if outcome.is_ok() { "ok" } else { "error" };
            metrics::counter!(
                metric_names::CONFIG_RELOADS.name,
                label::SOURCE => "identity",
                label::OUTCOME => word
            )
            .increment(1);
        }
        outcome
    }

    /// Watches the files' directories and reloads after changes settle, and
    /// re-reads them every minute in case a change event was missed.
    ///
    /// Must be called inside a tokio runtime. Watching stops when the returned
    /// handle is dropped. Without files (see [`from_identity`](Self::from_identity))
    /// the handle watches nothing.
    ///
    /// Returns at once: what creating the watcher needs is checked here
    /// (failing is an error; on Linux the watcher itself, and its thread, is
    /// created later), and its directories are registered in the background
    /// once start-up is over (a second after this call), since that waits for
    /// the watcher's own thread to start (up to milliseconds on a busy machine)
    /// and takes a blocking thread. Once they are registered the files are
    /// compared with the identity in force and reloaded if they differ, so a
    /// change written before the watch was in place is not missed. A directory
    /// that cannot be registered (the inotify watch limit, say) is logged, and
    /// the files are then only re-read every minute.
    pub fn watch(&self) -> Result<IdentityWatch, IdentityError> {
        self.watch_with(|| {})
    }

    /// [`watch`](Self::watch), running `before_register` on the background
    /// thread just before the directories are registered (tests use it to
    /// write a change the watcher cannot see).
    pub(crate) fn watch_with(
        &self,
        before_register: impl FnOnce() + Send + 'static,
    ) -> Result<IdentityWatch, IdentityError> {
        let Some(files) = self.inner.files.clone() else {
            return Ok(IdentityWatch { task: None });
        };
        let (tx, rx) = mpsc::unbounded_channel();
        // The watcher starts a thread of its own, so on Linux it is created with
        // the registering, once start-up is over; what would make creating it
        // fail (no inotify instance left) is checked here, so that still fails
        // start-up.
        let created = create_watcher_now(&tx).map_err(|source| IdentityError::Watch {
            path: ".".into(),
            source,
        })?;
        let source = self.clone();
        let start = move || {
            before_register();
            let watcher = match created {
                Some(watcher) => Some(watcher),
                None => match new_watcher(tx) {
                    Ok(watcher) => Some(watcher),
                    Err(source) => {
                        let error = IdentityError::Watch {
                            path: ".".into(),
                            source,
                        };
                        tracing::warn!(
                            %error,
                            "identity files are not watched; they are re-read every {}s instead",
                            POLL_INTERVAL.as_secs()
                        );
                        None
                    }
                },
            };
            let watcher = watcher.and_then(|watcher| register(watcher, &files));
            // Caught up only after registering: a change from here on raises an
            // event, one before it shows in the files.
            if !files.hold(&source.current()) {
                let _ = source.reload();
            }
            watcher
        };
        let task = tokio::spawn(reload_on_change(self.clone(), start, rx));
        Ok(IdentityWatch { task: Some(task) })
    }
}

/// A watcher sending `()` on `changes` for every change that may matter.
fn new_watcher(changes: mpsc::UnboundedSender<()>) -> notify::Result<notify::RecommendedWatcher> {
    notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Our own reads raise access events; only writes matter.
        let relevant = match event {
            Ok(event) => is_write(&event.kind),
            Err(_) => true,
        };
        if relevant {
            let _ = changes.send(());
        }
    })
}

/// Linux: checks that an inotify instance can be had (what creating the
/// watcher needs, and the limit `fs.inotify.max_user_instances` can refuse)
/// and leaves creating it, and its thread, for later: `None`.
#[cfg(target_os = "linux")]
fn create_watcher_now(
    _changes: &mpsc::UnboundedSender<()>,
) -> notify::Result<Option<notify::RecommendedWatcher>> {
    inotify::Inotify::init()
        .map(|_probe| None)
        .map_err(notify::Error::io)
}

/// Elsewhere: creates the watcher now, so failing to is a start-up error.
#[cfg(not(target_os = "linux"))]
fn create_watcher_now(
    changes: &mpsc::UnboundedSender<()>,
) -> notify::Result<Option<notify::RecommendedWatcher>> {
    new_watcher(changes.clone()).map(Some)
}

/// Registers every directory of `files` with `watcher`; `None` (logged) when
/// one cannot be, leaving the minute's re-read to notice changes.
fn register(
    mut watcher: notify::RecommendedWatcher,
    files: &IdentityFiles,
) -> Option<notify::RecommendedWatcher> {
    for dir in files.directories() {
        if let Err(source) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
            let error = IdentityError::Watch { path: dir, source };
            tracing::warn!(
                %error,
                "identity files are not watched; they are re-read every {}s instead",
                POLL_INTERVAL.as_secs()
            );
            return None;
        }
    }
    Some(watcher)
}

/// An [`IdentitySource`] that does not keep it alive, for the task feeding it.
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "workload-api"), allow(dead_code))]
pub(crate) struct WeakSource(Weak<Inner>);

#[cfg_attr(not(feature = "workload-api"), allow(dead_code))]
impl WeakSource {
    /// The source, while any clone of it lives.
    pub(crate) fn upgrade(&self) -> Option<IdentitySource> {
        self.0.upgrade().map(|inner| IdentitySource { inner })
    }
}

fn is_write(kind: &EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

async fn reload_on_change(
    source: IdentitySource,
    start: impl FnOnce() -> Option<notify::RecommendedWatcher> + Send + 'static,
    changes: mpsc::UnboundedReceiver<()>,
) {
    // Not during start-up (see REGISTER_AFTER).
    tokio::time::sleep(REGISTER_AFTER).await;
    // Registering waits for the watcher's thread, and catching up reads files:
    // both block, so neither runs on the runtime (nor on the caller's thread).
    // Dropping this task drops the watcher.
    let watcher = tokio::task::spawn_blocking(start).await.ok().flatten();
    // Without a watcher no event comes; the channel would only say "closed".
    let mut changes = watcher.is_some().then_some(changes);
    let mut poll = tokio::time::interval(POLL_INTERVAL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    poll.tick().await; // the first tick is immediate; the files were just compared
    loop {
        tokio::select! {
            change = next_change(&mut changes) => {
                if change.is_none() {
                    return;
                }
                // Debounce: wait until no change arrived for DEBOUNCE.
                loop {
                    match tokio::time::timeout(DEBOUNCE, next_change(&mut changes)).await {
                        Ok(Some(())) => continue,
                        Ok(None) => return,
                        Err(_quiet) => break,
                    }
                }
            }
            _ = poll.tick() => {}
        }
        // File reads block; keep them off the runtime's worker threads. Errors
        // are logged and counted inside; the last good identity stays.
        let source = source.clone();
        let _ = tokio::task::spawn_blocking(move || source.reload()).await;
    }
}

/// The next change event; never, without a watcher.
async fn next_change(changes: &mut Option<mpsc::UnboundedReceiver<()>>) -> Option<()> {
    match changes {
        Some(changes) => changes.recv().await,
        None => std::future::pending().await,
    }
}

/// Keeps an identity's files watched; dropping it stops watching.
#[derive(Debug)]
pub struct IdentityWatch {
    /// Owns the watcher; `None` for a source without files.
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for IdentityWatch {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

fn record_expiry(identity: &Identity) {
    let secs = identity
        .not_after()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    metrics::gauge!(
        metric_names::TLS_CERTIFICATE_EXPIRATION.name,
        label::IDENTITY => identity.spiffe_id().to_string()
    )
    .set(secs);
}
