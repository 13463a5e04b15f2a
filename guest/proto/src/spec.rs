//! The run spec: how init sets up the guest, encoded as length-prefixed byte
//! strings. What to run arrives later, over vsock, as an
//! [`ExecRequest`](crate::ExecRequest).

use thiserror::Error;

const MAGIC: &[u8; 8] = b"HUTCHSP2";
/// Upper bound on any one count or length, so a corrupt spec cannot make init
/// allocate without limit.
const MAX_ITEM: u32 = 16 << 20;

/// Errors decoding a [`RunSpec`] or an [`ExecRequest`](crate::ExecRequest).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SpecError {
    /// The spec does not start with the expected magic bytes.
    #[error("run spec: bad magic (not a hutch spec, or another version)")]
    BadMagic,
    /// The spec ends in the middle of a field.
    #[error("truncated at byte {0}")]
    Truncated(usize),
    /// A count or length is beyond [`MAX_ITEM`].
    #[error("length {len} at byte {at} is too large")]
    TooLarge { at: usize, len: u32 },
    /// Bytes are left over after the last field.
    #[error("{0} trailing bytes")]
    Trailing(usize),
    /// argv is empty.
    #[error("empty argv")]
    EmptyArgv,
    /// A field holds a value outside its range.
    #[error("bad value {value} for {field}")]
    BadValue { field: &'static str, value: u32 },
}

/// How init sets up the guest.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RunSpec {
    /// Absolute host path of the workspace; mounted at the same path.
    pub workspace: Vec<u8>,
    /// Home directory to create as a tmpfs (absolute).
    pub home: Vec<u8>,
    /// `false`: the first session on the ready connection is the run's
    /// command, and the guest powers off when it ends. `true`: the guest stays
    /// up, serving sessions, until the host asks it to shut down.
    pub detached: bool,
    /// PEM bundle the guest's tools trust (host roots plus the sandbox's
    /// proxy CA), written to [`CA_BUNDLE_PATH`](crate::CA_BUNDLE_PATH);
    /// empty when the proxy intercepts nothing.
    pub ca_bundle: Vec<u8>,
}

impl RunSpec {
    /// Encodes the spec.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        put_bytes(&mut out, &self.workspace);
        put_bytes(&mut out, &self.home);
        put_u32(&mut out, usize::from(self.detached));
        put_bytes(&mut out, &self.ca_bundle);
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
            workspace: r.bytes()?,
            home: r.bytes()?,
            detached: r.flag("detached")?,
            ca_bundle: r.bytes()?,
        };
        r.finish()?;
        Ok(spec)
    }
}

pub(crate) fn put_u32(out: &mut Vec<u8>, v: usize) {
    let v = u32::try_from(v).expect("run spec field over 4 GiB");
    out.extend_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u32(out, b.len());
    out.extend_from_slice(b);
}

pub(crate) fn put_list(out: &mut Vec<u8>, items: &[Vec<u8>]) {
    put_u32(out, items.len());
    for i in items {
        put_bytes(out, i);
    }
}

pub(crate) struct Reader<'a> {
    pub(crate) buf: &'a [u8],
    pub(crate) pos: usize,
}

impl Reader<'_> {
    pub(crate) fn u32(&mut self) -> Result<u32, SpecError> {
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

    pub(crate) fn bytes(&mut self) -> Result<Vec<u8>, SpecError> {
        let len = self.u32()? as usize;
        let end = self.pos + len;
        let b = self
            .buf
            .get(self.pos..end)
            .ok_or(SpecError::Truncated(self.pos))?;
        self.pos = end;
        Ok(b.to_vec())
    }

    pub(crate) fn flag(&mut self, field: &'static str) -> Result<bool, SpecError> {
        match self.u32()? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(SpecError::BadValue { field, value }),
        }
    }

    pub(crate) fn finish(&self) -> Result<(), SpecError> {
        match self.buf.len() - self.pos {
            0 => Ok(()),
            n => Err(SpecError::Trailing(n)),
        }
    }

    pub(crate) fn list(&mut self) -> Result<Vec<Vec<u8>>, SpecError> {
        let n = self.u32()?;
        (0..n).map(|_| self.bytes()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RunSpec {
        RunSpec {
            workspace: "/w s/\u{e9}\n".as_bytes().to_vec(),
            home: b"/root".to_vec(),
            detached: true,
            ca_bundle: b"-----BEGIN CERTIFICATE-----\n".to_vec(),
        }
    }

    #[test]
    fn round_trips_odd_bytes() {
        let s = sample();
        assert_eq!(RunSpec::decode(&s.encode()).unwrap(), s);
        let one = RunSpec {
            detached: false,
            ..sample()
        };
        assert_eq!(RunSpec::decode(&one.encode()).unwrap(), one);
    }

    #[test]
    fn rejects_bad_magic_truncation_trailing_and_bad_flags() {
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
        let mut bad = enc.clone();
        let n = bad.len() - 4 - sample().ca_bundle.len();
        bad[n - 4] = 7;
        assert_eq!(
            RunSpec::decode(&bad),
            Err(SpecError::BadValue {
                field: "detached",
                value: 7
            })
        );
    }

    #[test]
    fn rejects_huge_lengths() {
        let mut enc = MAGIC.to_vec();
        enc.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            RunSpec::decode(&enc),
            Err(SpecError::TooLarge { .. })
        ));
    }
}
