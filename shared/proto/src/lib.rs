//! The Slipway API messages of `proto/slipway/v1/`.
//!
//! prost gives the binary encoding; pbjson gives serde impls that follow the proto3 JSON
//! mapping: proto field names on output (every field, defaults included), lowerCamelCase
//! accepted on input, 64-bit integers emitted as strings.

pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/slipway.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/slipway.v1.serde.rs"));
}
