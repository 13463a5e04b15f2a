//! Keeps secrets from flowing back to the sandbox: a streaming filter that
//! masks every occurrence of given byte strings with `*` (same length, so
//! HTTP framing is unchanged), even when one is split across reads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How long a held-back possible start of a secret waits for more bytes.
const HOLD: Duration = Duration::from_millis(20);

/// The filter state: the needles and the bytes held back because they may
/// be the start of one.
#[derive(Default)]
pub struct Redactor {
    needles: Vec<Vec<u8>>,
    held: Vec<u8>,
}

impl Redactor {
    pub fn new(needles: Vec<Vec<u8>>) -> Redactor {
        Redactor {
            needles: needles.into_iter().filter(|n| !n.is_empty()).collect(),
            held: Vec::new(),
        }
    }

    /// True when some bytes are held back.
    pub fn holding(&self) -> bool {
        !self.held.is_empty()
    }

    /// Takes the next bytes; returns what can be sent now.
    pub fn feed(&mut self, data: &[u8]) -> Vec<u8> {
        let mut buf = std::mem::take(&mut self.held);
        buf.extend_from_slice(data);
        for n in &self.needles {
            let mut i = 0;
            while i + n.len() <= buf.len() {
                if buf[i..].starts_with(n) {
                    buf[i..i + n.len()].fill(b'*');
                    i += n.len();
                } else {
                    i += 1;
                }
            }
        }
        let keep = self
            .needles
            .iter()
            .map(|n| {
                (1..n.len().min(buf.len() + 1))
                    .rev()
                    .find(|&k| buf.ends_with(&n[..k]))
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0);
        self.held = buf.split_off(buf.len() - keep);
        buf
    }

    /// Everything held back (no secret can complete any more).
    pub fn flush(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.held)
    }
}

/// Copies `r` to `w` through the filter until EOF, counting bytes written.
/// Held-back bytes go out after a short pause with nothing more to read.
pub async fn copy<R, W>(
    r: &mut R,
    w: &mut W,
    mut f: Redactor,
    count: &AtomicU64,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let read = if f.holding() {
            tokio::time::timeout(HOLD, r.read(&mut buf)).await.ok()
        } else {
            Some(r.read(&mut buf).await)
        };
        let out = match read {
            None => f.flush(),
            Some(Ok(0)) => {
                let out = f.flush();
                w.write_all(&out).await?;
                count.fetch_add(out.len() as u64, Ordering::Relaxed);
                return w.flush().await;
            }
            Some(Ok(n)) => f.feed(&buf[..n]),
            Some(Err(e)) => return Err(e),
        };
        w.write_all(&out).await?;
        w.flush().await?;
        count.fetch_add(out.len() as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(needles: &[&str], parts: &[&str]) -> String {
        let mut f = Redactor::new(needles.iter().map(|n| n.as_bytes().to_vec()).collect());
        let mut out = Vec::new();
        for p in parts {
            out.extend(f.feed(p.as_bytes()));
        }
        out.extend(f.flush());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn masks_whole_and_split_occurrences() {
        assert_eq!(run(&["sk-123"], &["key=sk-123;"]), "key=******;");
        assert_eq!(
            run(&["sk-123"], &["key=sk-", "12", "3 and sk-1"]),
            "key=****** and sk-1"
        );
        assert_eq!(
            run(&["sk-123", "Bearer sk-123"], &["Bearer sk-123"]),
            "Bearer ******"
        );
        assert_eq!(run(&[], &["plain"]), "plain");
        assert_eq!(run(&["abc"], &["ab", "ab", "c"]), "ab***");
    }

    #[test]
    fn holds_back_only_possible_starts() {
        let mut f = Redactor::new(vec![b"secret".to_vec()]);
        assert_eq!(f.feed(b"hello"), b"hello");
        assert!(!f.holding());
        assert_eq!(f.feed(b"xx sec"), b"xx ");
        assert!(f.holding());
        assert_eq!(f.flush(), b"sec");
    }

    #[tokio::test]
    async fn copy_flushes_held_bytes_after_a_pause() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let (mut out_w, mut out_r) = tokio::io::duplex(1024);
        let count = AtomicU64::new(0);
        let f = Redactor::new(vec![b"secret".to_vec()]);
        let copier = async {
            copy(&mut b, &mut out_w, f, &count).await.unwrap();
            drop(out_w);
        };
        let driver = async {
            a.write_all(b"a sec").await.unwrap();
            let mut got = [0u8; 5];
            out_r.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"a sec", "held bytes are released after the pause");
            a.write_all(b"ret secret").await.unwrap();
            drop(a);
            let mut rest = Vec::new();
            out_r.read_to_end(&mut rest).await.unwrap();
            assert_eq!(rest, b"ret ******");
        };
        tokio::join!(copier, driver);
        assert_eq!(count.load(Ordering::Relaxed), 15);
    }
}
