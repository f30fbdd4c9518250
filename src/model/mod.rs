//! The domain model: jobs, their states and exits, what they ask for (resources, cpusets), who
//! they run as (credentials) and what the node has to give (inventory).
//!
//! Plain data with its rules and text forms. It may use nothing else of the crate: the stages
//! that sense, decide, act and store all speak these types.

pub mod cpuset;
pub mod credentials;
pub mod exit;
pub mod inventory;
pub mod job;
pub mod jobstate;
pub mod limits;
pub mod resources;
pub mod text;
