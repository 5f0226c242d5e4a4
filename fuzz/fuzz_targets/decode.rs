//! Fuzz target: the packet decoder.
//!
//! The first input byte picks the protocol version and a maximum packet size; the rest is a
//! byte stream decoded packet after packet, as a connection would. The decoder must never panic,
//! must not consume bytes when it asks for more, and every packet it accepts must re-encode to
//! bytes that decode to the same packet.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use shardmq::protocol::{Version, decode};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, stream)) = data.split_first() else { return };
    let version = match sel % 3 {
        0 => Version::V3_1,
        1 => Version::V3_1_1,
        _ => Version::V5,
    };
    let max = if sel & 0x80 != 0 { 64 } else { u32::MAX };
    let mut buf = BytesMut::from(stream);
    loop {
        let before = buf.len();
        match decode(&mut buf, version, max) {
            Ok(Some(packet)) => {
                // A CONNECT is re-encoded in its own version; everything else in the stream's.
                let mut out = BytesMut::new();
                packet.encode(version, &mut out).expect("a decoded packet re-encodes");
                let again = decode(&mut out, version, u32::MAX)
                    .expect("re-encoded packet decodes")
                    .expect("re-encoded packet is complete");
                assert_eq!(again, packet);
                assert!(out.is_empty());
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "need-more must not consume");
                break;
            }
            Err(_) => break,
        }
    }
});
