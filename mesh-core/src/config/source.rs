//! Where settings are read from: the process environment, or a map in tests.

use std::collections::{BTreeMap, HashMap};

/// A read-only set of named string settings.
///
/// The mesh reads its configuration only through this trait, so tests and apps
/// that keep settings elsewhere hand it a map instead of mutating the process
/// environment.
pub trait Source {
    /// The value of `name`, if set.
    fn get(&self, name: &str) -> Option<String>;
    /// Every name that is set (used to find misspelled `MESH_` settings).
    fn names(&self) -> Vec<String>;

    /// Every name starting with `prefix` that is set, with its value, sorted
    /// by name. This version asks [`names`](Self::names), then
    /// [`get`](Self::get) for each match; [`Env`] reads the environment once.
    fn vars_with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let mut names = self.names();
        names.retain(|n| n.starts_with(prefix));
        names.sort_unstable();
        names.dedup();
        names
            .into_iter()
            .filter_map(|name| {
                let value = self.get(&name)?;
                Some((name, value))
            })
            .collect()
    }
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Env;

impl Source for Env {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn names(&self) -> Vec<String> {
        std::env::vars_os()
            .filter_map(|(k, _)| k.into_string().ok())
            .collect()
    }

    /// One pass over the environment, rather than a `getenv` (a scan of the
    /// whole environment) per matching name. As with [`get`](Self::get), a
    /// value that is not Unicode counts as not set.
    fn vars_with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let mut vars: Vec<(String, String)> = std::env::vars_os()
            .filter_map(|(name, value)| {
                // The prefix first: most of an environment is not ours, and
                // need not be checked for Unicode.
                if !name.as_encoded_bytes().starts_with(prefix.as_bytes()) {
                    return None;
                }
                Some((name.into_string().ok()?, value.into_string().ok()?))
            })
            .collect();
        // A stable sort, then the first of any name set twice (an environment
        // may hold duplicates): the one `getenv`, and so `get`, returns.
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars.dedup_by(|later, first| later.0 == first.0);
        vars
    }
}

impl Source for HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).cloned()
    }

    fn names(&self) -> Vec<String> {
        self.keys().cloned().collect()
    }
}

impl Source for BTreeMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        BTreeMap::get(self, name).cloned()
    }

    fn names(&self) -> Vec<String> {
        self.keys().cloned().collect()
    }
}

impl Source for [(&str, &str)] {
    fn get(&self, name: &str) -> Option<String> {
        self.iter()
            .rev()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }

    fn names(&self) -> Vec<String> {
        self.iter().map(|(k, _)| k.to_string()).collect()
    }
}

impl<const N: usize> Source for [(&str, &str); N] {
    fn get(&self, name: &str) -> Option<String> {
        Source::get(self.as_slice(), name)
    }

    fn names(&self) -> Vec<String> {
        Source::names(self.as_slice())
    }
}

/// Layers one source over another: `overrides` wins where both set a name.
#[derive(Debug, Clone)]
pub struct Layered<A, B> {
    overrides: A,
    base: B,
}

impl<A: Source, B: Source> Layered<A, B> {
    /// `overrides` shadows `base`.
    pub fn new(overrides: A, base: B) -> Self {
        Layered { overrides, base }
    }
}

impl<A: Source, B: Source> Source for Layered<A, B> {
    fn get(&self, name: &str) -> Option<String> {
        self.overrides.get(name).or_else(|| self.base.get(name))
    }

    fn names(&self) -> Vec<String> {
        let mut names = self.overrides.names();
        names.extend(self.base.names());
        names.sort_unstable();
        names.dedup();
        names
    }
}
