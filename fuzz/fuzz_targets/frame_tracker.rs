//! The frame tracker against a strict reference: the bytes a direction forwards, however the
//! input is split into reads, are exactly what a parser of the whole stream allows: every frame up
//! to the first that breaks a rule, never a byte of that frame's header, and never part of a header
//! that is not whole yet. Feeding follows the relay's contract (held bytes first).
#![no_main]

use auth_proxy::wire::{Advance, FrameTracker, Limits, Violation, HELD_ROOM};
use libfuzzer_sys::fuzz_target;

/// The whole stream parsed at once: (bytes that may be forwarded, the violation).
fn reference(s: &[u8], l: &Limits) -> (usize, Option<Violation>, bool) {
    let mut i = 0;
    let mut in_message = false;
    let mut message_len: u64 = 0;
    loop {
        if s.len() - i < 2 {
            return (i, None, true);
        }
        let (b0, b1) = (s[i], s[i + 1]);
        let ext = match b1 & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let hl = 2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 };
        if s.len() - i < hl {
            return (i, None, true);
        }
        let len = match b1 & 0x7f {
            126 => u64::from(u16::from_be_bytes([s[i + 2], s[i + 3]])),
            127 => u64::from_be_bytes(s[i + 2..i + 10].try_into().unwrap()),
            n => u64::from(n),
        };
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0f;
        let cut = |v| (i, Some(v), true);
        if b0 & 0x70 != 0 && !l.reserved_bits {
            return cut(Violation::Protocol("reserved bits set without an extension"));
        }
        if opcode >= 8 {
            if opcode > 0xA {
                return cut(Violation::Protocol("reserved opcode"));
            }
            if !fin || len > 125 {
                return cut(Violation::Protocol("bad control frame"));
            }
        } else {
            match opcode {
                0 if !in_message => {
                    return cut(Violation::Protocol("continuation without a message"))
                }
                1 | 2 if in_message => {
                    return cut(Violation::Protocol("new message inside a fragmented one"))
                }
                0 => {}
                1 | 2 => message_len = 0,
                _ => return cut(Violation::Protocol("reserved opcode")),
            }
            if len > l.max_frame {
                return cut(Violation::TooBig);
            }
            message_len = message_len.saturating_add(len);
            if message_len > l.max_message {
                return cut(Violation::TooBig);
            }
            in_message = !fin;
        }
        i += hl;
        if (s.len() - i) as u64 <= len {
            return (s.len(), None, (s.len() - i) as u64 == len);
        }
        i += len as usize;
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 6 {
        return;
    }
    let limits = Limits {
        max_frame: u64::from(u16::from_be_bytes([data[0], data[1]])),
        max_message: u64::from(u16::from_be_bytes([data[2], data[3]])) * 4,
        reserved_bits: data[4] & 1 == 1,
    };
    let split = usize::from(data[5] % 17) + 1;
    let stream = &data[6..];
    let (want, violation, boundary) = reference(stream, &limits);

    let mut t = FrameTracker::new();
    let mut buf = vec![0u8; HELD_ROOM + 17];
    let mut forwarded = 0;
    let mut got = None;
    // Read sizes vary: 1..=split, cycling.
    let mut at = 0;
    let mut step = 1;
    while at < stream.len() {
        let n = step.min(stream.len() - at);
        step = step % split + 1;
        buf[HELD_ROOM..HELD_ROOM + n].copy_from_slice(&stream[at..at + n]);
        at += n;
        let held = t.held().len();
        let chunk = t.with_held(&mut buf, n).to_vec();
        assert_eq!(chunk.len(), held + n);
        match t.advance(&chunk, &limits) {
            Advance::Forward(k) => {
                assert!(k <= chunk.len());
                forwarded += k;
            }
            Advance::Cut { forward, violation } => {
                forwarded += forward;
                got = Some(violation);
                break;
            }
        }
        // What is held is exactly what was read and not forwarded.
        assert_eq!(forwarded + t.held().len(), at, "bytes lost or doubled");
    }
    assert_eq!((forwarded, got), (want, violation), "tracker vs reference");
    if got.is_none() {
        assert_eq!(t.at_boundary(), boundary);
    }
});
