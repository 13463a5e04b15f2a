//! Reads a captured serial stream on stdin and prints it readably: console
//! text as is, frames as `[kind] payload`, the exit status as `[exit] N`.
//! Exits with the status from the Exit frame (or 1 if there was none).

use std::io::{Read, Write};

use hutch_proto::{Frame, FrameDecoder, FrameKind};

fn main() {
    let mut wire = Vec::new();
    std::io::stdin().read_to_end(&mut wire).expect("read stdin");
    let mut out = std::io::stdout().lock();
    let mut status = None;
    for frame in FrameDecoder::new().push(&wire) {
        let _ = match frame {
            Frame::Console(text) => out.write_all(&text),
            Frame::Data(FrameKind::Exit, p) if p.len() == 4 => {
                let s = i32::from_le_bytes([p[0], p[1], p[2], p[3]]);
                status = Some(s);
                writeln!(out, "\n[exit] {s}")
            }
            Frame::Data(kind, p) => {
                writeln!(
                    out,
                    "\n[{kind:?}] {}",
                    String::from_utf8_lossy(&p).escape_debug()
                )
            }
        };
    }
    std::process::exit(status.unwrap_or(1));
}
