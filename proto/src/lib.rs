//! The Statiko management API, package `statiko.v1`: generated prost messages, tonic clients and
//! servers, and the encoded descriptor set for server reflection.
//!
//! The `.proto` files in `proto/statiko/v1/` are the contract; nothing here is hand-written logic.

#![allow(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    clippy::all
)]

/// Generated code for `statiko.v1`.
pub mod v1 {
    tonic::include_proto!("statiko.v1");
}

/// Encoded `FileDescriptorSet` of every `statiko.v1` file, for tonic-reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("statiko_descriptor");
