//! Fuzz target: the WebSocket opening handshake and frame decoder.
//!
//! The first input byte picks a chunk size, a maximum frame size and a request limit. The rest
//! goes to the handshake whole, then (after the request, if it is accepted) to a server-side
//! frame decoder twice: at once and in chunks, as reads would bring it. Neither may panic; the
//! two decodings must see the same data bytes, the same control frames and the same violation;
//! and between calls the decoder never leaves more than one partial header or control frame in
//! its input.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use shardmq::websocket::{
    Control, Decoder, Handshake, MAX_CONTROL_PAYLOAD, MAX_HEADER, Role, Violation, handshake,
};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, stream)) = data.split_first() else {
        return;
    };

    let max_request = if sel & 0x80 != 0 { 64 } else { 8192 };
    // After an accepted handshake the frames are what follows it; otherwise the whole input.
    let frames = match handshake(stream, "/mqtt", max_request) {
        Handshake::Incomplete => {
            assert!(stream.len() <= max_request);
            stream
        }
        Handshake::Accept {
            response, consumed, ..
        } => {
            assert!(consumed <= stream.len() && consumed <= max_request);
            assert!(response.starts_with(b"HTTP/1.1 101 "));
            &stream[consumed..]
        }
        Handshake::Reject { response, .. } => {
            assert!(response.starts_with(b"HTTP/1.1 4"));
            stream
        }
    };

    let chunk = usize::from(sel & 0x3f) + 1;
    let max_frame = if sel & 0x40 != 0 { 256 } else { u64::MAX };
    let whole = run(frames, frames.len().max(1), max_frame);
    let chunked = run(frames, chunk, max_frame);
    assert_eq!(whole, chunked);
});

/// Decodes `stream` fed `chunk` bytes at a time: data bytes, control frames, violation.
fn run(stream: &[u8], chunk: usize, max_frame: u64) -> (Vec<u8>, Vec<Control>, Option<Violation>) {
    let mut decoder = Decoder::new(Role::Server, max_frame);
    let mut input = BytesMut::new();
    let mut out = BytesMut::new();
    let mut controls = Vec::new();
    let mut fed = 0;
    for piece in stream.chunks(chunk) {
        input.extend_from_slice(piece);
        fed += piece.len();
        loop {
            match decoder.decode(&mut input, &mut out) {
                Ok(Some(control)) => controls.push(control),
                Ok(None) => break,
                Err(violation) => return (out.to_vec(), controls, Some(violation)),
            }
        }
        assert!(input.len() < MAX_HEADER + MAX_CONTROL_PAYLOAD);
        assert!(out.len() <= fed);
    }
    (out.to_vec(), controls, None)
}
