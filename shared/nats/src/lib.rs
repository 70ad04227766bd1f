//! NATS plumbing shared by every Slipway service: connecting (with the server version gate),
//! the JSON/protobuf codec, the micro-service helper that turns typed errors into API error
//! replies, and start-up provisioning of the streams and KV buckets in `nats/`.

pub mod client;
pub mod codec;
pub mod connect;
pub mod consumer;
pub mod events;
pub mod krane;
pub mod kv;
pub mod lease;
pub mod micro;
pub mod provision;
pub mod retry;
pub mod shutdown;

pub use connect::{connect, ConnectError, MIN_SERVER_VERSION};
pub use micro::{Call, Micro};
