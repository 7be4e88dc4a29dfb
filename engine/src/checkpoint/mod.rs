//! Original-layout single-file checkpoints (`model.diffusion_model.*`, `first_stage_model.*`,
//! `cond_stage_model.*`, `conditioner.embedders.*`): which family a file is ([`detect`]), the
//! key maps between their names and the diffusers components' ([`keymap`]), and loading one
//! as a model ([`load`]).

pub mod detect;
pub mod keymap;
pub mod load;

pub use detect::{detect, Detection};
pub use load::{inspect, is_single_file, CheckpointOptions, Inspection};
