//! WebSocket frame boundaries as they stream past the relay: parses frame headers only (2-14 bytes,
//! RFC 6455 section 5.2), never payloads, so the relay knows where frames and messages start and end,
//! enforces size limits toward the agent and can inject a close frame at a frame boundary.
//!
//! Pure logic: [`FrameTracker::advance`] is fed each chunk read from one direction of a tunnel and
//! says how many bytes of it may be forwarded; [`close_frame`] builds the close frames the edge sends.
//!
//! A frame header is forwarded only once it is whole and has passed the checks: when a chunk ends
//! inside one, its first bytes are held ([`FrameTracker::held`]) and go in front of the next
//! chunk, so not one byte of a frame that breaks the limits reaches the agent, however the
//! client splits it.

/// Close code: protocol error.
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;

/// Size limits applied to one direction (toward the agent). `u64::MAX` means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest payload of one frame.
    pub max_frame: u64,
    /// Largest data message (the payloads of its fragments together).
    pub max_message: u64,
    /// Frames may set the reserved bits RSV1-3: only when an extension (such as
    /// `permessage-deflate`) was negotiated; without one they are a protocol error (RFC 6455
    /// section 5.2), so compressed data cannot pass limits that count its compressed size.
    pub reserved_bits: bool,
}

impl Limits {
    pub const NONE: Limits = Limits {
        max_frame: u64::MAX,
        max_message: u64::MAX,
        reserved_bits: true,
    };
}

/// Room a reader leaves in front of the bytes it reads, for [`FrameTracker::held`] (a header is
/// at most 14 bytes, so at most 13 are ever held).
pub const HELD_ROOM: usize = 13;

/// Why a stream of frames was cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// A frame or message over the limits (close 1009).
    TooBig,
    /// Not a valid frame sequence (close 1002): reserved opcode, fragmented or oversized control
    /// frame, continuation without a message, or a new message inside a fragmented one.
    Protocol(&'static str),
}

impl Violation {
    /// The close code and reason sent to the client.
    pub fn close(self) -> (u16, &'static str) {
        match self {
            Violation::TooBig => (crate::live::tunnels::CLOSE_TOO_BIG, "message too big"),
            Violation::Protocol(why) => (CLOSE_PROTOCOL_ERROR, why),
        }
    }
}

/// The result of feeding one chunk to a tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advance {
    /// The first `n` bytes may be forwarded; the rest (the start of a frame header that is not
    /// whole yet) is held by the tracker and must come first in the next chunk.
    Forward(usize),
    /// Only the first `forward` bytes may be forwarded; then the tunnel must close.
    Cut {
        forward: usize,
        violation: Violation,
    },
}

/// Where one direction of a tunnel is in its frame sequence. 24 bytes of state.
#[derive(Debug, Default, Clone)]
pub struct FrameTracker {
    header: [u8; 14],
    header_len: u8,
    payload_left: u64,
    /// A fragmented data message is in progress.
    in_message: bool,
    /// Payload bytes of the data message so far.
    message_len: u64,
    /// A close frame has passed in this direction.
    saw_close: bool,
}

/// The length of a frame header, once its first two bytes are known.
fn header_len(b0_b1: [u8; 2]) -> usize {
    let masked = b0_b1[1] & 0x80 != 0;
    let ext = match b0_b1[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + ext + if masked { 4 } else { 0 }
}

impl FrameTracker {
    pub fn new() -> FrameTracker {
        FrameTracker::default()
    }

    /// Between two frames, as far as the forwarded bytes go (held header bytes were not
    /// forwarded): a frame injected now would not split another one.
    pub fn at_boundary(&self) -> bool {
        self.payload_left == 0
    }

    /// A close frame has passed in this direction.
    pub fn saw_close(&self) -> bool {
        self.saw_close
    }

    /// The first bytes of a frame header that was not whole at the end of the last chunk: not
    /// forwarded, they must be given back at the front of the next chunk to [`Self::advance`].
    pub fn held(&self) -> &[u8] {
        &self.header[..self.header_len as usize]
    }

    /// Puts [`Self::held`] in front of the `n` bytes a reader put at `buf[HELD_ROOM..]`, and
    /// returns the chunk to give to [`Self::advance`].
    pub fn with_held<'b>(&self, buf: &'b mut [u8], n: usize) -> &'b [u8] {
        let held = self.held();
        let start = HELD_ROOM - held.len();
        buf[start..HELD_ROOM].copy_from_slice(held);
        &buf[start..HELD_ROOM + n]
    }

    /// Follows `chunk` (the held bytes, then the next bytes of this direction) and says how much of
    /// it may be forwarded now.
    pub fn advance(&mut self, chunk: &[u8], limits: &Limits) -> Advance {
        debug_assert!(chunk.starts_with(self.held()), "the held bytes come first");
        // The held bytes are at the front of `chunk`: the header is read again from there.
        self.header_len = 0;
        let mut at = 0;
        // Where the header being read started in this chunk.
        let mut header_start = 0;
        while at < chunk.len() {
            if self.payload_left > 0 {
                let take = (chunk.len() - at)
                    .min(usize::try_from(self.payload_left).unwrap_or(usize::MAX));
                self.payload_left -= take as u64;
                at += take;
                continue;
            }
            if self.header_len == 0 {
                header_start = at;
            }
            let need = if self.header_len < 2 {
                2
            } else {
                header_len([self.header[0], self.header[1]])
            };
            let take = (need - self.header_len as usize).min(chunk.len() - at);
            self.header[self.header_len as usize..self.header_len as usize + take]
                .copy_from_slice(&chunk[at..at + take]);
            self.header_len += take as u8;
            at += take;
            if (self.header_len as usize) < need {
                continue;
            }
            if need == 2 && header_len([self.header[0], self.header[1]]) > 2 {
                continue; // the first two bytes said the header is longer
            }
            if let Err(violation) = self.frame_complete(limits) {
                return Advance::Cut {
                    forward: header_start,
                    violation,
                };
            }
        }
        if self.header_len > 0 {
            Advance::Forward(header_start)
        } else {
            Advance::Forward(chunk.len())
        }
    }

    /// A whole header is in `self.header`: check it and start its payload.
    fn frame_complete(&mut self, limits: &Limits) -> Result<(), Violation> {
        let h = &self.header;
        let fin = h[0] & 0x80 != 0;
        let reserved = h[0] & 0x70 != 0;
        let opcode = h[0] & 0x0f;
        let len = match h[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
            127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
            n => u64::from(n),
        };
        self.header_len = 0;
        if reserved && !limits.reserved_bits {
            return Err(Violation::Protocol(
                "reserved bits set without an extension",
            ));
        }
        if opcode >= 0x8 {
            if opcode > 0xA {
                return Err(Violation::Protocol("reserved opcode"));
            }
            if !fin || len > 125 {
                return Err(Violation::Protocol("bad control frame"));
            }
            if opcode == OP_CLOSE {
                self.saw_close = true;
            }
        } else {
            match opcode {
                OP_CONTINUATION if !self.in_message => {
                    return Err(Violation::Protocol("continuation without a message"))
                }
                OP_TEXT | OP_BINARY if self.in_message => {
                    return Err(Violation::Protocol("new message inside a fragmented one"))
                }
                OP_CONTINUATION => {}
                OP_TEXT | OP_BINARY => self.message_len = 0,
                _ => return Err(Violation::Protocol("reserved opcode")),
            }
            if len > limits.max_frame {
                return Err(Violation::TooBig);
            }
            self.message_len = self.message_len.saturating_add(len);
            if self.message_len > limits.max_message {
                return Err(Violation::TooBig);
            }
            self.in_message = !fin;
        }
        self.payload_left = len;
        Ok(())
    }
}

/// A close frame from the edge (server role: unmasked), with `code` and `reason` (cut to 123 bytes).
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let reason = &reason.as_bytes()[..reason
        .len()
        .min(crate::live::tunnels::MAX_CLOSE_REASON_BYTES)];
    let mut frame = Vec::with_capacity(4 + reason.len());
    frame.push(0x80 | OP_CLOSE);
    frame.push((2 + reason.len()) as u8);
    frame.extend_from_slice(&code.to_be_bytes());
    frame.extend_from_slice(reason);
    frame
}

/// A close frame toward the agent (client role: masked with `mask`).
pub fn masked_close_frame(code: u16, reason: &str, mask: [u8; 4]) -> Vec<u8> {
    let mut frame = close_frame(code, reason);
    frame[1] |= 0x80;
    let payload: Vec<u8> = frame[2..]
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ mask[i % 4])
        .collect();
    frame.truncate(2);
    frame.extend_from_slice(&mask);
    frame.extend_from_slice(&payload);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame as a client sends it (masked), with `len` payload bytes.
    fn frame(fin: bool, opcode: u8, len: usize, masked: bool) -> Vec<u8> {
        let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
        let m = if masked { 0x80 } else { 0 };
        if len < 126 {
            f.push(m | len as u8);
        } else if len <= 0xffff {
            f.push(m | 126);
            f.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            f.push(m | 127);
            f.extend_from_slice(&(len as u64).to_be_bytes());
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(0x5a, len));
        f
    }

    fn limits(frame: u64, message: u64) -> Limits {
        Limits {
            max_frame: frame,
            max_message: message,
            reserved_bits: false,
        }
    }

    /// Feeds `bytes` in chunks of `step` as the relay does (held bytes first); returns the total
    /// forwarded and the violation, if any.
    fn feed(
        t: &mut FrameTracker,
        bytes: &[u8],
        step: usize,
        l: &Limits,
    ) -> (usize, Option<Violation>) {
        let mut forwarded = 0;
        let mut buf = vec![0u8; HELD_ROOM + step];
        for piece in bytes.chunks(step) {
            buf[HELD_ROOM..HELD_ROOM + piece.len()].copy_from_slice(piece);
            let chunk = t.with_held(&mut buf, piece.len()).to_vec();
            match t.advance(&chunk, l) {
                Advance::Forward(n) => forwarded += n,
                Advance::Cut { forward, violation } => {
                    return (forwarded + forward, Some(violation))
                }
            }
        }
        (forwarded, None)
    }

    #[test]
    fn no_byte_of_an_oversized_frame_passes_however_it_is_split() {
        let ok = frame(true, OP_TEXT, 10, true);
        // 64-bit length: a 14-byte header for a 70,000-byte frame over a 1,000-byte limit.
        let big = frame(true, OP_BINARY, 70_000, true);
        let stream = [ok.clone(), big].concat();
        for step in [1, 2, 3, 5, 13, 14, 15, 100, stream.len()] {
            let mut t = FrameTracker::new();
            let (forwarded, violation) = feed(&mut t, &stream, step, &limits(1000, 10_000));
            assert_eq!(violation, Some(Violation::TooBig), "step {step}");
            assert_eq!(forwarded, ok.len(), "step {step}: only the frame before");
        }
    }

    #[test]
    fn a_partial_header_is_held_then_forwarded_whole() {
        let f = frame(true, OP_TEXT, 300, true); // 8-byte header
        let mut t = FrameTracker::new();
        assert_eq!(t.advance(&f[..5], &Limits::NONE), Advance::Forward(0));
        assert_eq!(t.held(), &f[..5]);
        assert!(t.at_boundary(), "nothing of the frame went out yet");
        let mut buf = [0u8; HELD_ROOM + 10];
        buf[HELD_ROOM..HELD_ROOM + 10].copy_from_slice(&f[5..15]);
        let chunk = t.with_held(&mut buf, 10).to_vec();
        assert_eq!(chunk, &f[..15]);
        assert_eq!(t.advance(&chunk, &Limits::NONE), Advance::Forward(15));
        assert!(t.held().is_empty());
        assert!(!t.at_boundary(), "inside the payload");
    }

    #[test]
    fn reserved_bits_need_an_extension() {
        let mut compressed = frame(true, OP_TEXT, 5, true);
        compressed[0] |= 0x40; // RSV1: permessage-deflate
        let mut t = FrameTracker::new();
        assert_eq!(
            feed(&mut t, &compressed, 64, &limits(1000, 1000)),
            (
                0,
                Some(Violation::Protocol(
                    "reserved bits set without an extension"
                ))
            )
        );
        let allowed = Limits {
            reserved_bits: true,
            ..limits(1000, 1000)
        };
        let mut t = FrameTracker::new();
        assert_eq!(
            feed(&mut t, &compressed, 64, &allowed),
            (compressed.len(), None)
        );
    }

    #[test]
    fn header_lengths_cover_all_encodings() {
        for (len, masked, want) in [
            (0, false, 2),
            (125, true, 6),
            (126, false, 4),
            (65535, true, 8),
            (65536, false, 10),
            (70000, true, 14),
        ] {
            let f = frame(true, OP_BINARY, len, masked);
            assert_eq!(header_len([f[0], f[1]]), want, "len {len} masked {masked}");
            assert_eq!(f.len(), want + len);
        }
    }

    #[test]
    fn frames_split_at_every_byte_are_followed() {
        let mut stream = Vec::new();
        stream.extend(frame(false, OP_TEXT, 3, true));
        stream.extend(frame(true, 0x9, 4, true)); // ping inside a fragmented message
        stream.extend(frame(false, OP_CONTINUATION, 300, true));
        stream.extend(frame(true, 0xA, 0, true)); // pong
        stream.extend(frame(true, OP_CONTINUATION, 70_000, true));
        stream.extend(frame(true, OP_BINARY, 126, true));
        for step in [1, 2, 3, 7, 14, 1000, stream.len()] {
            let mut t = FrameTracker::new();
            let (forwarded, violation) = feed(&mut t, &stream, step, &Limits::NONE);
            assert_eq!((forwarded, violation), (stream.len(), None), "step {step}");
            assert!(t.at_boundary());
            assert!(!t.saw_close());
        }
    }

    #[test]
    fn a_frame_over_the_limit_is_cut_before_its_header() {
        let mut stream = frame(true, OP_TEXT, 10, true);
        let ok_len = stream.len();
        stream.extend(frame(true, OP_BINARY, 2000, true));
        let mut t = FrameTracker::new();
        let (forwarded, violation) = feed(&mut t, &stream, stream.len(), &limits(1000, 10_000));
        assert_eq!(forwarded, ok_len);
        assert_eq!(violation, Some(Violation::TooBig));
        assert_eq!(Violation::TooBig.close().0, 1009);
    }

    #[test]
    fn a_message_over_the_limit_in_small_fragments_is_cut() {
        let mut stream = Vec::new();
        for _ in 0..5 {
            stream.extend(frame(
                false,
                if stream.is_empty() {
                    OP_TEXT
                } else {
                    OP_CONTINUATION
                },
                300,
                true,
            ));
        }
        let mut t = FrameTracker::new();
        let (forwarded, violation) = feed(&mut t, &stream, 64, &limits(1000, 1000));
        assert_eq!(violation, Some(Violation::TooBig));
        assert_eq!(
            forwarded,
            3 * (300 + 8),
            "the fourth fragment crosses 1000 bytes"
        );
    }

    #[test]
    fn control_frames_do_not_count_toward_the_message() {
        let mut stream = frame(false, OP_TEXT, 600, true);
        stream.extend(frame(true, 0x9, 125, true));
        stream.extend(frame(true, OP_CONTINUATION, 400, true));
        let mut t = FrameTracker::new();
        assert_eq!(
            feed(&mut t, &stream, 50, &limits(1000, 1000)),
            (stream.len(), None)
        );
        // A new message starts the count again.
        let again = frame(true, OP_BINARY, 1000, true);
        assert_eq!(
            feed(&mut t, &again, 50, &limits(1000, 1000)),
            (again.len(), None)
        );
    }

    #[test]
    fn protocol_violations_are_named() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                frame(true, OP_CONTINUATION, 1, true),
                "continuation without a message",
            ),
            (
                [
                    frame(false, OP_TEXT, 1, true),
                    frame(true, OP_BINARY, 1, true),
                ]
                .concat(),
                "new message inside a fragmented one",
            ),
            (frame(false, 0x9, 1, true), "bad control frame"),
            (frame(true, 0x9, 126, true), "bad control frame"),
            (frame(true, 0x3, 1, true), "reserved opcode"),
            (frame(true, 0xB, 1, true), "reserved opcode"),
        ];
        for (bytes, why) in cases {
            let mut t = FrameTracker::new();
            let (_, violation) = feed(&mut t, &bytes, 1, &Limits::NONE);
            assert_eq!(violation, Some(Violation::Protocol(why)));
        }
    }

    #[test]
    fn a_close_frame_is_noticed() {
        let mut t = FrameTracker::new();
        let close = masked_close_frame(1000, "bye", [9, 8, 7, 6]);
        assert_eq!(feed(&mut t, &close, 1, &Limits::NONE), (close.len(), None));
        assert!(t.saw_close());
    }

    #[test]
    fn close_frames_are_well_formed() {
        assert_eq!(
            close_frame(1001, "bye"),
            vec![0x88, 5, 0x03, 0xE9, b'b', b'y', b'e']
        );
        let long = "x".repeat(300);
        let f = close_frame(1009, &long);
        assert_eq!(f.len(), 2 + 125);
        assert_eq!(f[1], 125);
        let m = masked_close_frame(1001, "bye", [1, 2, 3, 4]);
        assert_eq!(&m[..6], &[0x88, 0x85, 1, 2, 3, 4]);
        let unmasked: Vec<u8> = m[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ [1, 2, 3, 4][i % 4])
            .collect();
        assert_eq!(unmasked, vec![0x03, 0xE9, b'b', b'y', b'e']);
    }
}
