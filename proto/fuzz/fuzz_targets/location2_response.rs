//! Fuzzes the `Response<LocationAnswer>` decoder (version 2: with the answering host's inventory): it may refuse any input, never panic, and whatever
//! it accepts must re-encode to bytes that decode to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scored_proto::*;

#[path = "round_trip.rs"]
mod round_trip;

fuzz_target!(|data: &[u8]| round_trip::check::<Response<LocationAnswer>>(data));
