//! Durable state: the job journal, the event log and the state directory's per-job files.
//!
//! What survives a daemon restart. May use `model/` only: wire types (`api/`) are built from
//! these records, never the other way round.

pub mod eventlog;
pub mod history;
pub mod journal;
pub mod statedir;
