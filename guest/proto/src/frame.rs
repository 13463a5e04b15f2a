//! Framing on the serial line.
//!
//! A frame is `FRAME_MAGIC` (2 bytes), a kind byte, a little-endian `u16`
//! payload length and the payload. Anything that does not parse as a frame is
//! console text (kernel messages) and is handed back as such, so a kernel
//! panic printed in the middle of a run is never mistaken for output.

/// Two bytes that never occur in kernel console text.
pub const FRAME_MAGIC: [u8; 2] = [0xf5, 0x1f];
/// Largest payload of one frame.
pub const MAX_PAYLOAD: usize = 4096;
const HEADER: usize = 5;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// Guest to host: bytes the command wrote to stdout.
    Stdout = 1,
    /// Guest to host: bytes the command wrote to stderr.
    Stderr = 2,
    /// Guest to host: the exit status (`i32`, little endian), last frame.
    Exit = 3,
    /// Guest to host: init could not do its job; UTF-8 message.
    Error = 4,
    /// Host to guest: bytes for the command's stdin.
    Stdin = 0x10,
    /// Host to guest: stdin reached end of file.
    StdinEof = 0x11,
}

impl FrameKind {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Stdout,
            2 => Self::Stderr,
            3 => Self::Exit,
            4 => Self::Error,
            0x10 => Self::Stdin,
            0x11 => Self::StdinEof,
            _ => return None,
        })
    }
}

/// One decoded unit of the serial stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A complete frame.
    Data(FrameKind, Vec<u8>),
    /// Bytes outside any frame.
    Console(Vec<u8>),
}

impl Frame {
    /// Encodes one frame; `payload` must be at most [`MAX_PAYLOAD`] bytes.
    pub fn encode(kind: FrameKind, payload: &[u8]) -> Vec<u8> {
        assert!(payload.len() <= MAX_PAYLOAD, "frame payload too large");
        let mut out = Vec::with_capacity(HEADER + payload.len());
        out.extend_from_slice(&FRAME_MAGIC);
        out.push(kind as u8);
        out.extend_from_slice(&(payload.len() as u16).to_le_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// Encodes `data` as as many frames of `kind` as it takes.
    pub fn encode_all(kind: FrameKind, data: &[u8], out: &mut Vec<u8>) {
        for chunk in data.chunks(MAX_PAYLOAD) {
            out.extend_from_slice(&Self::encode(kind, chunk));
        }
    }
}

/// Incremental decoder: feed it bytes as they arrive, in any split.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    /// Creates an empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes and returns every unit that is now complete, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Frame> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut console = Vec::new();
        let mut i = 0;
        while i < self.buf.len() {
            let rest = &self.buf[i..];
            match header(rest) {
                Header::Frame(kind, len) if rest.len() >= HEADER + len => {
                    if !console.is_empty() {
                        out.push(Frame::Console(std::mem::take(&mut console)));
                    }
                    out.push(Frame::Data(kind, rest[HEADER..HEADER + len].to_vec()));
                    i += HEADER + len;
                }
                Header::Frame(..) | Header::Partial => break,
                Header::NotFrame => {
                    console.push(rest[0]);
                    i += 1;
                }
            }
        }
        if !console.is_empty() {
            out.push(Frame::Console(console));
        }
        self.buf.drain(..i);
        out
    }

    /// Bytes held back because they may start a frame.
    pub fn pending(&self) -> &[u8] {
        &self.buf
    }
}

enum Header {
    Frame(FrameKind, usize),
    Partial,
    NotFrame,
}

fn header(b: &[u8]) -> Header {
    for (i, m) in FRAME_MAGIC.iter().enumerate() {
        match b.get(i) {
            None => return Header::Partial,
            Some(x) if x != m => return Header::NotFrame,
            _ => {}
        }
    }
    let Some(&k) = b.get(2) else {
        return Header::Partial;
    };
    let Some(kind) = FrameKind::from_u8(k) else {
        return Header::NotFrame;
    };
    let Some(len) = b.get(3..5) else {
        return Header::Partial;
    };
    let len = u16::from_le_bytes([len[0], len[1]]) as usize;
    if len > MAX_PAYLOAD {
        return Header::NotFrame;
    }
    Header::Frame(kind, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_frames_split_anywhere() {
        let mut wire = b"[ 0.1] boot\r\n".to_vec();
        wire.extend(Frame::encode(FrameKind::Stdout, b"hello \xf5\x1f world"));
        wire.extend(b"panic text");
        wire.extend(Frame::encode(FrameKind::Exit, &7i32.to_le_bytes()));
        for split in 0..wire.len() {
            let mut d = FrameDecoder::new();
            let mut got = d.push(&wire[..split]);
            got.extend(d.push(&wire[split..]));
            let mut data = vec![];
            let mut console = vec![];
            for f in got {
                match f {
                    Frame::Data(k, p) => data.push((k, p)),
                    Frame::Console(c) => console.extend(c),
                }
            }
            assert_eq!(console, b"[ 0.1] boot\r\npanic text", "split {split}");
            assert_eq!(
                data[0],
                (FrameKind::Stdout, b"hello \xf5\x1f world".to_vec())
            );
            assert_eq!(data[1], (FrameKind::Exit, 7i32.to_le_bytes().to_vec()));
            assert!(d.pending().is_empty());
        }
    }

    #[test]
    fn bad_kind_or_length_is_console_text() {
        let mut d = FrameDecoder::new();
        let got = d.push(&[0xf5, 0x1f, 0x99, 0, 0, b'x']);
        assert_eq!(
            got,
            vec![Frame::Console(vec![0xf5, 0x1f, 0x99, 0, 0, b'x'])]
        );
        let got = d.push(&[0xf5, 0x1f, 1, 0xff, 0xff]);
        assert_eq!(got, vec![Frame::Console(vec![0xf5, 0x1f, 1, 0xff, 0xff])]);
    }

    #[test]
    fn encode_all_chunks() {
        let data = vec![7u8; MAX_PAYLOAD * 2 + 3];
        let mut wire = vec![];
        Frame::encode_all(FrameKind::Stderr, &data, &mut wire);
        let got = FrameDecoder::new().push(&wire);
        assert_eq!(got.len(), 3);
        let joined: Vec<u8> = got
            .into_iter()
            .flat_map(|f| match f {
                Frame::Data(FrameKind::Stderr, p) => p,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(joined, data);
    }
}
