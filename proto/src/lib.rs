//! flopmeter-proto: the wire protocol between agents, the collector and admin clients.
//!
//! The `.proto` files live in `proto/flopmeter/v1/` (package `flopmeter.v1`). The Rust code
//! generated from them is committed in `src/gen/` and checked for drift by
//! `tests/bootstrap.rs`, so building flopmeter never needs `protoc` (see ARCHITECTURE.md).
//!
//! - [`v1`]: messages, the `Ingest` client and server (agents → collector) and the `Admin`
//!   client and server (CLI → collector, `admin.proto`).
//! - [`convert`]: conversions between wire enums and flopmeter-core's types.

/// Package `flopmeter.v1`, generated.
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    rust_2018_idioms,
    missing_debug_implementations
)]
pub mod v1 {
    include!("gen/flopmeter.v1.rs");
}

pub mod convert;
