//! Fuzzes the `Response<StatsResponse>` decoder: it may refuse any input, never panic, and whatever it
//! accepts must re-encode to bytes that decode to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scored_proto::*;

fuzz_target!(|data: &[u8]| {
    // Twice: as a whole frame, and as a payload behind a matching prefix so that most inputs
    // reach the body decoder instead of failing the length check.
    let mut framed = ((data.len() as u32).wrapping_add(1)).to_be_bytes().to_vec();
    framed.push(WIRE_VERSION);
    framed.extend_from_slice(data);
    for bytes in [data, &framed[..]] {
        if let Ok(m) = decode::<Response<StatsResponse>>(bytes) {
            let again = encode(&m).expect("a decoded value re-encodes");
            assert_eq!(decode::<Response<StatsResponse>>(&again).expect("re-encoded value decodes"), m);
        }
    }
});
