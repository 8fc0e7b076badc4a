//! The property every decoder target checks: a decoder may refuse any input and never panics,
//! and whatever it accepts re-encodes to bytes that decode to the same value.

use scored_proto::{WireMessage, decode, encode};
use std::fmt::Debug;

pub fn check<M: WireMessage + PartialEq + Debug>(data: &[u8]) {
    // Twice: as a whole frame, and as a payload behind a matching prefix so that most inputs
    // reach the body decoder instead of failing the length check.
    let mut framed = ((data.len() as u32).wrapping_add(1)).to_be_bytes().to_vec();
    framed.push(M::VERSION);
    framed.extend_from_slice(data);
    for bytes in [data, &framed[..]] {
        if let Ok(m) = decode::<M>(bytes) {
            let again = encode(&m).expect("a decoded value re-encodes");
            assert_eq!(decode::<M>(&again).expect("re-encoded value decodes"), m);
        }
    }
}
