//! Moving bytes between the command's pipes and the serial channel.

use std::io::{self, Read, Write};

use hutch_proto::{Frame, FrameDecoder, FrameKind, MAX_PAYLOAD};

use crate::channel::FrameSink;

/// Copies `src` into frames of `kind` until end of file, one frame per read, so
/// output streams as it is produced. If the sink fails, keeps reading (and
/// dropping) so the command never blocks on a full pipe; returns the first
/// sink error, if any.
pub fn pump_output<R: Read, W: Write>(
    mut src: R,
    kind: FrameKind,
    sink: &FrameSink<W>,
) -> io::Result<()> {
    let mut buf = vec![0u8; MAX_PAYLOAD];
    let mut first_err = None;
    loop {
        match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if first_err.is_none() {
                    if let Err(e) = sink.send(kind, &buf[..n]) {
                        first_err = Some(e);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(first_err.unwrap_or(e)),
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// Decodes frames from the host and feeds `Stdin` payloads to `stdin`;
/// `StdinEof` closes it (drops the writer). Console bytes and other frames are
/// ignored. A write error (the command closed its stdin) drops the writer too;
/// later input is discarded. Returns when `tty` reaches end of file.
pub fn pump_input<R: Read, W: Write>(mut tty: R, mut stdin: Option<W>) -> io::Result<()> {
    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; MAX_PAYLOAD];
    loop {
        let n = match tty.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        for frame in decoder.push(&buf[..n]) {
            match frame {
                Frame::Data(FrameKind::Stdin, payload) => {
                    if let Some(w) = stdin.as_mut() {
                        if w.write_all(&payload).and_then(|()| w.flush()).is_err() {
                            stdin = None;
                        }
                    }
                }
                Frame::Data(FrameKind::StdinEof, _) => stdin = None,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use std::sync::mpsc;

    fn data_frames(wire: &[u8]) -> Vec<(FrameKind, Vec<u8>)> {
        FrameDecoder::new()
            .push(wire)
            .into_iter()
            .map(|f| match f {
                Frame::Data(k, p) => (k, p),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    /// A reader that hands out the given chunks, one per read.
    struct Chunks(Vec<Vec<u8>>);
    impl Read for Chunks {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Ok(0);
            }
            let c = self.0.remove(0);
            buf[..c.len()].copy_from_slice(&c);
            Ok(c.len())
        }
    }

    #[test]
    fn output_is_one_frame_per_read() {
        let sink = FrameSink::new(Vec::new());
        let src = Chunks(vec![b"a".to_vec(), b"\xff\xf5\x1f".to_vec()]);
        pump_output(src, FrameKind::Stderr, &sink).unwrap();
        let got = data_frames(&sink.into_inner());
        assert_eq!(
            got,
            [
                (FrameKind::Stderr, b"a".to_vec()),
                (FrameKind::Stderr, b"\xff\xf5\x1f".to_vec())
            ]
        );
    }

    #[test]
    fn output_keeps_draining_after_sink_error() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::from(io::ErrorKind::BrokenPipe))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut src = Cursor::new(vec![0u8; 3 * MAX_PAYLOAD]);
        let err = pump_output(&mut src, FrameKind::Stdout, &FrameSink::new(Broken)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        assert_eq!(src.position(), 3 * MAX_PAYLOAD as u64);
    }

    #[test]
    fn input_feeds_stdin_until_eof_frame() {
        let mut wire = b"kernel noise\r\n".to_vec();
        wire.extend(Frame::encode(FrameKind::Stdin, b"hello "));
        wire.extend(Frame::encode(FrameKind::Stdout, b"ignored"));
        wire.extend(Frame::encode(FrameKind::Stdin, b"world\n"));
        wire.extend(Frame::encode(FrameKind::StdinEof, b""));
        wire.extend(Frame::encode(FrameKind::Stdin, b"after eof"));
        // Feed it split into 3-byte reads to exercise the decoder.
        let chunks = Chunks(wire.chunks(3).map(<[u8]>::to_vec).collect());
        let (tx, rx) = mpsc::channel();
        struct Probe(Vec<u8>, mpsc::Sender<Vec<u8>>);
        impl Write for Probe {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0.extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        impl Drop for Probe {
            fn drop(&mut self) {
                let _ = self.1.send(std::mem::take(&mut self.0));
            }
        }
        pump_input(chunks, Some(Probe(Vec::new(), tx))).unwrap();
        assert_eq!(rx.recv().unwrap(), b"hello world\n");
    }

    #[test]
    fn pumps_a_real_child_through_os_pipes() {
        use std::process::{Command, Stdio};
        let mut child = Command::new("sh")
            .args(["-c", "cat; echo err >&2; exit 3"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut wire = Frame::encode(FrameKind::Stdin, b"in\xfe\n");
        wire.extend(Frame::encode(FrameKind::StdinEof, b""));
        let stdin = child.stdin.take();
        let input = std::thread::spawn(move || pump_input(Cursor::new(wire), stdin));
        let sink = std::sync::Arc::new(FrameSink::new(Vec::new()));
        let s2 = sink.clone();
        let err = child.stderr.take().unwrap();
        let t = std::thread::spawn(move || pump_output(err, FrameKind::Stderr, &s2));
        pump_output(child.stdout.take().unwrap(), FrameKind::Stdout, &sink).unwrap();
        t.join().unwrap().unwrap();
        input.join().unwrap().unwrap();
        assert_eq!(child.wait().unwrap().code(), Some(3));
        let sink = std::sync::Arc::try_unwrap(sink).unwrap();
        let got = data_frames(&sink.into_inner());
        let joined = |kind| -> Vec<u8> {
            got.iter()
                .filter(|(k, _)| *k == kind)
                .flat_map(|(_, p)| p.clone())
                .collect()
        };
        assert_eq!(joined(FrameKind::Stdout), b"in\xfe\n");
        assert_eq!(joined(FrameKind::Stderr), b"err\n");
    }
}
