//! Real parts for tests and benchmarks: a control plane over real processes ([`Plane`]),
//! nats-servers and service processes (from `slipway-local`), throwaway SQLite / PostgreSQL
//! databases and rows seeded into them, the invariant checker every fault test ends with,
//! reply decoding and percentiles. Everything stops when dropped.

pub mod database;
pub mod invariants;
pub mod partition;
pub mod plane;
pub mod podman;
pub mod reply;
pub mod seed;
pub mod stats;
pub mod streams;

pub use database::TestDb;
pub use invariants::Invariants;
pub use partition::Partition;
pub use plane::{Nats, Plane, PlaneBuilder};
pub use podman::Podman;
pub use reply::{decode_reply, ErrorReply};
pub use slipway_local::{nats_server, ports, process, NatsCluster, NatsServer, ServiceProcess};
pub use stats::Samples;
pub use streams::stream_messages;
