//! A model of the election for the `stateright` model checker, built on the
//! real `election::machine::Machine`: every candidate's decisions are the
//! machine's own `decide`, `observe`, `write_ok`, `write_failed`, `expire`,
//! `begin` and `step_down`; the model only supplies what the driver and the
//! cluster would (time, the API server, watches, faults).
//!
//! - [`world`]: the state (candidates, the API server, watches, budgets) and
//!   its transitions;
//! - [`props`]: the properties, and the fault-free continuation that judges
//!   liveness and hand-off;
//! - [`drift`]: which model action drives each variant of the machine's
//!   enums, so the two cannot drift apart unnoticed;
//! - [`trace`]: a counterexample as a readable sequence of events.
//!
//! Included by `tests/model.rs` only (`#[path]`), so no other test binary
//! compiles it.

pub mod drift;
pub mod props;
pub mod trace;
pub mod world;

pub use world::{Act, Budget, Bug, Config, ElectionModel};
