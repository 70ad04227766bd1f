//! Slipway's domain model, shared by every service: the API error type, ids, the states of a
//! deployment, configuration, lifecycle events and the region-agent (Krane) documents.

pub mod config;
pub mod domains;
pub mod error;
pub mod events;
pub mod fault;
pub mod ids;
pub mod krane;
pub mod registry_auth;
pub mod routes;
pub mod seeded;
pub mod service;
pub mod state;
pub mod subjects;
pub mod time;
pub mod transition_keys;

pub use error::{ApiError, ErrorCode};
