//! The socket API: the versioned wire protocol, the client that speaks it, and job-list files.
//!
//! May use `model/` and `store/` record types; the daemon and the CLI both build on it.
pub mod client;
pub mod jobfile;
pub mod metrics;
pub mod protocol;
