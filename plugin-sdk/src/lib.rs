//! beeswax plugin SDK: the plugin ABI (version 1) and Rust helpers to implement it.
//!
//! One plugin source builds both as a native `cdylib` and as a `wasm32-unknown-unknown`
//! module. The ABI is a handful of C functions ([`abi::exports`]): the plugin exports its ABI
//! version, its capabilities and an allocator; byte buffers travel as pointer + length in the
//! plugin's memory; tensors are shape + dtype + little-endian data ([`wire`]); fallible calls
//! return a status code plus a message. A Rust plugin implements a trait
//! ([`SchedulerPlugin`], [`PostProcessor`], [`PreProcessor`]) and calls [`export_plugin!`].
//! C plugins include `include/beeswax_plugin.h`. See the crate's README for a walk-through
//! and the version rules.
//!
//! The crate is `no_std` + `alloc`; the default `std` feature adds panic catching at the ABI
//! boundary (a panic never unwinds into the host).
#![no_std]

extern crate alloc;

pub mod abi;
pub mod export;
pub mod plugin;
pub mod wire;

pub use plugin::{Error, PostProcessor, PreProcessor, SchedulerPlugin};
pub use wire::{Image, ParamValue, Params, Schedule, SchedulerInit, Tensor, TensorData};
