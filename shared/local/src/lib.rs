//! Slipway's parts as local processes: nats-servers (single node or a 3-node cluster) on free
//! ports with their own store directories, and service processes that can be SIGKILLed or
//! SIGSTOPped. `slipway dev` runs a control plane with them; the test kit re-exports them.
//! Everything stops when dropped.

pub mod nats_server;
pub mod ports;
pub mod process;
pub mod process_groups;

pub use nats_server::{NatsCluster, NatsServer};
pub use process::ServiceProcess;
