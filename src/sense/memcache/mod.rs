//! memcached's text protocol: request encoding, an incremental reply parser, and a non-blocking
//! connection with its buffers. Used by the probe and the load generator.

pub mod conn;
pub mod proto;

pub use conn::Conn;
pub use proto::{ProtoError, Reply, Stats};
