//! Metric handles resolved once per label combination, so the request path
//! records into an atomic instead of building a key, hashing labels and looking
//! the series up in the recorder's registry on every request.
//!
//! Readers take no lock: the map is an immutable snapshot behind an `ArcSwap`,
//! replaced (copied with the new entry) under a mutex the first time a label
//! combination is seen. Label values are bounded by design (metric_names.rs),
//! so the map stops changing after warm-up; a hard cap still keeps a bug that
//! mints values from growing it: past the cap handles are resolved per use.
//!
//! The `metrics` facade has one global recorder, but tests (and some apps) set
//! a thread-local one for a while. A cached handle belongs to the recorder that
//! made it, so the snapshot remembers which recorder that was and starts over
//! when another one is in force.
//!
//! The first key seen under a recorder is also kept beside the snapshot, where
//! a look-up reaches it without the snapshot's load (an `ArcSwap` load walks a
//! thread-local debt list) or a hash: a service's calls mostly carry one label
//! combination (one method to one port, one endpoint), and that is usually it.

use std::borrow::Borrow;
use std::hash::Hash;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use rustc_hash::FxHashMap;

/// Label combinations one cache holds at most; beyond it, handles are resolved
/// per use (correct, only slower).
pub const MAX_CACHED_SERIES: usize = 4096;

/// Recorders whose first key a cache keeps outside its snapshot: the no-op one
/// (a request before telemetry was set up), the global one, and a couple of
/// tests' local ones. Under further recorders every look-up goes through the
/// snapshot (correct, only slower).
const FIRST_KEY_RECORDERS: usize = 4;

/// A cache of metric handles (`metrics::Counter`, `Histogram`, `Gauge`, or a
/// struct of them) keyed by the bounded label values that pick the series.
pub struct HandleCache<K, V> {
    /// The first key made under each recorder, in the order the recorders came;
    /// only ever filled (under `write`), so reading one is an atomic load.
    first: [OnceLock<FirstKey<K, V>>; FIRST_KEY_RECORDERS],
    snapshot: ArcSwap<Snapshot<K, V>>,
    write: Mutex<()>,
}

/// The first key a cache made a handle for under `recorder`.
struct FirstKey<K, V> {
    recorder: usize,
    key: K,
    handle: V,
}

struct Snapshot<K, V> {
    /// The recorder the handles were made by (its address), see the module docs.
    recorder: usize,
    /// Fx, not SipHash: the keys are label values from our own bounded sets, so
    /// there is no adversary to flood the map with collisions.
    map: FxHashMap<K, V>,
}

impl<K, V> Default for HandleCache<K, V> {
    fn default() -> Self {
        HandleCache {
            first: Default::default(),
            snapshot: ArcSwap::from_pointee(Snapshot {
                recorder: 0,
                map: FxHashMap::default(),
            }),
            write: Mutex::new(()),
        }
    }
}

impl<K, V> std::fmt::Debug for HandleCache<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandleCache")
            .field("series", &self.snapshot.load().map.len())
            .finish()
    }
}

/// Which recorder is in force on this thread now (local, global or no-op).
fn current_recorder() -> usize {
    metrics::with_recorder(|r| r as *const dyn metrics::Recorder as *const () as usize)
}

impl<K: Hash + Eq + Clone, V: Clone> HandleCache<K, V> {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Calls `use_it` with the handle for `key`, making it with `make` the first
    /// time `key` is seen under the current recorder.
    pub fn with<Q, R>(&self, key: &Q, make: impl FnOnce(&Q) -> V, use_it: impl FnOnce(&V) -> R) -> R
    where
        K: Borrow<Q>,
        Q: ?Sized + Hash + Eq + ToOwned<Owned = K>,
    {
        let recorder = current_recorder();
        if let Some(first) = self.first_key(recorder) {
            if first.key.borrow() == key {
                return use_it(&first.handle);
            }
        }
        {
            let snapshot = self.snapshot.load();
            if snapshot.recorder == recorder {
                if let Some(handle) = snapshot.map.get(key) {
                    return use_it(handle);
                }
            }
        }
        let handle = make(key);
        self.insert(recorder, key, &handle);
        use_it(&handle)
    }

    /// The handle for `key`, cloned (an `Arc` increment), for handles a future
    /// keeps until it completes.
    pub fn get<Q>(&self, key: &Q, make: impl FnOnce(&Q) -> V) -> V
    where
        K: Borrow<Q>,
        Q: ?Sized + Hash + Eq + ToOwned<Owned = K>,
    {
        self.with(key, make, V::clone)
    }

    /// The first key made under `recorder`, if it is one of the recorders kept.
    fn first_key(&self, recorder: usize) -> Option<&FirstKey<K, V>> {
        self.first
            .iter()
            .map_while(OnceLock::get)
            .find(|first| first.recorder == recorder)
    }

    fn insert<Q>(&self, recorder: usize, key: &Q, handle: &V)
    where
        K: Borrow<Q>,
        Q: ?Sized + Hash + Eq + ToOwned<Owned = K>,
    {
        let _write = self.write.lock();
        if self.first_key(recorder).is_none() {
            // Filled in order under the lock: the first empty slot is the next.
            if let Some(slot) = self.first.iter().find(|slot| slot.get().is_none()) {
                let _ = slot.set(FirstKey {
                    recorder,
                    key: key.to_owned(),
                    handle: handle.clone(),
                });
            }
        }
        let current = self.snapshot.load();
        let mut map = if current.recorder == recorder {
            if current.map.len() >= MAX_CACHED_SERIES || current.map.contains_key(key) {
                return;
            }
            current.map.clone()
        } else {
            FxHashMap::default()
        };
        map.insert(key.to_owned(), handle.clone());
        self.snapshot.store(Arc::new(Snapshot { recorder, map }));
    }
}

/// One metric handle (or a struct of them) kept where the request path can
/// reach it without a lookup: for the series nearly every request records into
/// (a call that answered 200, say), beside a [`HandleCache`] holding the rest.
///
/// Made the first time it is used and kept for the recorder in force then; under
/// any other recorder (a test's thread-local one) the handle is resolved per use,
/// which is correct, only slower. So keep a slot inside an entry of a
/// [`HandleCache`] (made under the recorder in force, and made again when
/// another one is): a slot of its own would stay with whichever recorder was
/// in force first, the no-op one if a request came before telemetry was set up.
/// Reading it costs an atomic load and the recorder check, against a
/// [`HandleCache`]'s snapshot load and hash lookup.
pub struct HandleSlot<V> {
    slot: OnceLock<(usize, V)>,
}

impl<V> Default for HandleSlot<V> {
    fn default() -> Self {
        HandleSlot {
            slot: OnceLock::new(),
        }
    }
}

impl<V> std::fmt::Debug for HandleSlot<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandleSlot")
            .field("made", &self.slot.get().is_some())
            .finish()
    }
}

impl<V> HandleSlot<V> {
    /// An empty slot.
    pub fn new() -> Self {
        Self::default()
    }

    /// Calls `use_it` with the handle, making it with `make` the first time
    /// (or, under a recorder other than the one it was made for, each time).
    pub fn with<R>(&self, make: impl FnOnce() -> V, use_it: impl FnOnce(&V) -> R) -> R {
        let recorder = current_recorder();
        let mut make = Some(make);
        let (made_for, handle) = self.slot.get_or_init(|| {
            let make = make.take().expect("called once");
            (recorder, make())
        });
        if *made_for == recorder {
            return use_it(handle);
        }
        // Made for another recorder: resolve one for this use. (`make` is still
        // here: `get_or_init` only calls it when it stores our recorder.)
        let make = make
            .take()
            .expect("not used for a handle of another recorder");
        use_it(&make())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn a_handle_is_made_once_per_key() {
        let made = AtomicUsize::new(0);
        let cache = HandleCache::<u32, u32>::new();
        for _ in 0..3 {
            for key in [1, 2] {
                let v = cache.get(&key, |k| {
                    made.fetch_add(1, Ordering::Relaxed);
                    k * 10
                });
                assert_eq!(v, key * 10);
            }
        }
        assert_eq!(made.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn keys_past_the_cap_are_served_but_not_kept() {
        let cache = HandleCache::<usize, usize>::new();
        for key in 0..MAX_CACHED_SERIES + 10 {
            assert_eq!(cache.get(&key, |k| *k), key);
        }
        assert_eq!(cache.snapshot.load().map.len(), MAX_CACHED_SERIES);
    }

    #[test]
    fn a_slot_makes_its_handle_once() {
        let made = AtomicUsize::new(0);
        let slot = HandleSlot::<u32>::new();
        for _ in 0..3 {
            let v = slot.with(
                || {
                    made.fetch_add(1, Ordering::Relaxed);
                    7
                },
                |v| *v,
            );
            assert_eq!(v, 7);
        }
        assert_eq!(made.load(Ordering::Relaxed), 1);
    }

    #[cfg(feature = "prometheus")]
    #[test]
    fn a_slot_records_into_the_recorder_in_force() {
        use super::super::prometheus::{recorder, MeshRecorder, Recorder};
        let slot = HandleSlot::<metrics::Counter>::new();
        let first = recorder();
        let second = recorder();
        let count = |(recorder, _): &(MeshRecorder, Recorder)| {
            metrics::with_local_recorder(recorder, || {
                slot.with(|| metrics::counter!("slot_test"), |c| c.increment(1));
            });
        };
        count(&first);
        count(&second);
        count(&second);
        count(&first);
        assert!(first.1.handle().render().contains("slot_test_total 2"));
        assert!(second.1.handle().render().contains("slot_test_total 2"));
    }

    #[cfg(feature = "prometheus")]
    #[test]
    fn handles_follow_the_recorder_in_force() {
        use super::super::prometheus::{recorder, MeshRecorder, Recorder};
        let cache = HandleCache::<&'static str, metrics::Counter>::new();
        let first = recorder();
        let second = recorder();
        let count = |(recorder, _): &(MeshRecorder, Recorder)| {
            metrics::with_local_recorder(recorder, || {
                cache.with(
                    &"x",
                    |_| metrics::counter!("handles_test"),
                    |c| c.increment(1),
                );
            });
        };
        count(&first);
        count(&second);
        count(&second);
        count(&first);
        assert!(first.1.handle().render().contains("handles_test_total 2"));
        assert!(second.1.handle().render().contains("handles_test_total 2"));
    }

    #[cfg(feature = "prometheus")]
    #[test]
    fn the_first_key_is_kept_per_recorder_and_the_rest_in_the_snapshot() {
        let made = AtomicUsize::new(0);
        let cache = HandleCache::<u32, u32>::new();
        let (local, _) = super::super::prometheus::recorder();
        let lookups = || {
            for key in [1, 2, 1, 2] {
                let v = cache.get(&key, |k| {
                    made.fetch_add(1, Ordering::Relaxed);
                    k * 10
                });
                assert_eq!(v, key * 10);
            }
        };
        lookups();
        assert_eq!(made.load(Ordering::Relaxed), 2);
        metrics::with_local_recorder(&local, lookups);
        assert_eq!(
            made.load(Ordering::Relaxed),
            4,
            "made again for another recorder"
        );
        // Back under the first recorder: its first key is still kept, the other
        // key is made again (the snapshot holds the last recorder's handles).
        lookups();
        assert_eq!(made.load(Ordering::Relaxed), 5);
        assert_eq!(cache.first_key(current_recorder()).map(|f| f.key), Some(1));
    }
}
