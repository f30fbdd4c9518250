//! The `lowsched daemon`: wires samplers → state → policy → commands → actuator into one process,
//! and serves the socket.

pub mod config;
pub mod server;
pub mod table;
