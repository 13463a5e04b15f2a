//! The run spec: what init runs, encoded as length-prefixed byte strings.

use thiserror::Error;

const MAGIC: &[u8; 8] = b"HUTCHSP1";
/// Upper bound on any one count or length, so a corrupt spec cannot make init
/// allocate without limit.
const MAX_ITEM: u32 = 16 << 20;

/// Errors decoding a [`RunSpec`].
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SpecError {
    /// The spec does not start with the expected magic bytes.
    #[error("run spec: bad magic (not a hutch spec, or another version)")]
    BadMagic,
    /// The spec ends in the middle of a field.
    #[error("run spec: truncated at byte {0}")]
    Truncated(usize),
    /// A count or length is beyond [`MAX_ITEM`].
    #[error("run spec: length {len} at byte {at} is too large")]
    TooLarge { at: usize, len: u32 },
    /// Bytes are left over after the last field.
    #[error("run spec: {0} trailing bytes")]
    Trailing(usize),
    /// argv is empty.
    #[error("run spec: empty argv")]
    EmptyArgv,
}

/// What init runs, and where.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RunSpec {
    /// argv[0] is looked up in PATH when it has no slash.
    pub argv: Vec<Vec<u8>>,
    /// `KEY=VALUE` entries, exactly as the command will see them.
    pub env: Vec<Vec<u8>>,
    /// Working directory of the command (absolute).
    pub cwd: Vec<u8>,
    /// Absolute host path of the workspace; mounted at the same path.
    pub workspace: Vec<u8>,
    /// Home directory to create as a tmpfs (absolute).
    pub home: Vec<u8>,
}

impl RunSpec {
    /// Encodes the spec.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        put_list(&mut out, &self.argv);
        put_list(&mut out, &self.env);
        put_bytes(&mut out, &self.cwd);
        put_bytes(&mut out, &self.workspace);
        put_bytes(&mut out, &self.home);
        out
    }

    /// Decodes a spec written by [`RunSpec::encode`].
    pub fn decode(buf: &[u8]) -> Result<Self, SpecError> {
        if buf.len() < MAGIC.len() || &buf[..MAGIC.len()] != MAGIC {
            return Err(SpecError::BadMagic);
        }
        let mut r = Reader {
            buf,
            pos: MAGIC.len(),
        };
        let spec = RunSpec {
            argv: r.list()?,
            env: r.list()?,
            cwd: r.bytes()?,
            workspace: r.bytes()?,
            home: r.bytes()?,
        };
        if r.pos != buf.len() {
            return Err(SpecError::Trailing(buf.len() - r.pos));
        }
        if spec.argv.is_empty() {
            return Err(SpecError::EmptyArgv);
        }
        Ok(spec)
    }
}

fn put_u32(out: &mut Vec<u8>, v: usize) {
    let v = u32::try_from(v).expect("run spec field over 4 GiB");
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u32(out, b.len());
    out.extend_from_slice(b);
}

fn put_list(out: &mut Vec<u8>, items: &[Vec<u8>]) {
    put_u32(out, items.len());
    for i in items {
        put_bytes(out, i);
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn u32(&mut self) -> Result<u32, SpecError> {
        let end = self.pos + 4;
        let b = self
            .buf
            .get(self.pos..end)
            .ok_or(SpecError::Truncated(self.pos))?;
        let v = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        if v > MAX_ITEM {
            return Err(SpecError::TooLarge {
                at: self.pos,
                len: v,
            });
        }
        self.pos = end;
        Ok(v)
    }

    fn bytes(&mut self) -> Result<Vec<u8>, SpecError> {
        let len = self.u32()? as usize;
        let end = self.pos + len;
        let b = self
            .buf
            .get(self.pos..end)
            .ok_or(SpecError::Truncated(self.pos))?;
        self.pos = end;
        Ok(b.to_vec())
    }

    fn list(&mut self) -> Result<Vec<Vec<u8>>, SpecError> {
        let n = self.u32()?;
        (0..n).map(|_| self.bytes()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RunSpec {
        RunSpec {
            argv: vec![
                b"sh".to_vec(),
                b"-c".to_vec(),
                b"echo 'a b' \"c\"\n\xff\xfe".to_vec(),
            ],
            env: vec![
                b"PATH=/usr/bin".to_vec(),
                "UNI=\u{e9}\u{1f600}".as_bytes().to_vec(),
            ],
            cwd: b"/w s/p".to_vec(),
            workspace: b"/w s".to_vec(),
            home: b"/root".to_vec(),
        }
    }

    #[test]
    fn round_trips_odd_bytes() {
        let s = sample();
        assert_eq!(RunSpec::decode(&s.encode()).unwrap(), s);
    }

    #[test]
    fn rejects_bad_magic_truncation_and_trailing() {
        let enc = sample().encode();
        assert_eq!(RunSpec::decode(b"nope"), Err(SpecError::BadMagic));
        for cut in MAGIC.len()..enc.len() {
            assert!(
                matches!(RunSpec::decode(&enc[..cut]), Err(SpecError::Truncated(_))),
                "cut {cut}"
            );
        }
        let mut long = enc.clone();
        long.push(0);
        assert_eq!(RunSpec::decode(&long), Err(SpecError::Trailing(1)));
    }

    #[test]
    fn rejects_huge_lengths_and_empty_argv() {
        let mut enc = MAGIC.to_vec();
        enc.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            RunSpec::decode(&enc),
            Err(SpecError::TooLarge { .. })
        ));
        let empty = RunSpec {
            argv: vec![],
            ..sample()
        };
        assert_eq!(RunSpec::decode(&empty.encode()), Err(SpecError::EmptyArgv));
    }
}
