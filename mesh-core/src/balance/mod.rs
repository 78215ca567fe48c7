//! Load balancing over discovery snapshots (built by the foundation issue).
