//! Generated gRPC types (`proto/sekimori/v1`). They stay at the edge: `server` and `cli`.
#![allow(clippy::all, missing_docs, unreachable_pub)]

tonic::include_proto!("sekimori.v1");

/// The encoded descriptor set, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/sekimori_descriptor.bin"));
