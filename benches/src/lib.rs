//! Helpers shared by sluice's criterion benches.
//!
//! Run them all with `cargo bench -p sluice-benches`; each bench pins itself to one core with
//! [`pin_to_one_core`], so its figures are per core.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

/// Pins the calling thread to the last core (the one least likely to take interrupts for the
/// first), and returns its id, or `None` where pinning is not possible.
pub fn pin_to_one_core() -> Option<usize> {
    let core = core_affinity::get_core_ids()?.pop()?;
    core_affinity::set_for_current(core).then_some(core.id)
}
