//! Every decoder of untrusted bytes, on any input: frame headers, batch frames with every
//! envelope opened (with the test-vector keys, so authentic envelopes reach the payload
//! validators), acks and hello replies. The only acceptable outcomes are a value or an error.
//!
//! `cd protocol/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run decode corpus/decode`
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

use libfuzzer_sys::fuzz_target;
use sluice_protocol::fuzzing::check_decoders;

fuzz_target!(|data: &[u8]| check_decoders(data));
