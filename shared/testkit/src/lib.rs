//! Real parts for tests, benchmarks and `slipway dev`: nats-servers (single node or a 3-node
//! cluster) on free ports with their own store directories, service processes that can be
//! SIGKILLed or SIGSTOPped, throwaway SQLite / PostgreSQL databases, and the invariant checker
//! every fault test ends with. Everything stops when dropped.

pub mod database;
pub mod invariants;
pub mod nats_server;
pub mod ports;
pub mod process;
pub mod reply;
pub mod stats;
pub mod streams;

pub use database::TestDb;
pub use invariants::Invariants;
pub use nats_server::{NatsCluster, NatsServer};
pub use process::ServiceProcess;
pub use reply::{decode_reply, ErrorReply};
pub use stats::Samples;
pub use streams::stream_messages;
