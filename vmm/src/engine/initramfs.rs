//! The per-run initramfs: a newc cpio archive holding `/init` (hutch-init),
//! `/dev/console` and the run spec at `/hutch/spec`.

use hutch_proto::{RunSpec, SPEC_PATH};

const PAGE: usize = 4096;
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

/// Builds newc archives.
#[derive(Default)]
pub struct CpioWriter {
    out: Vec<u8>,
    ino: u32,
}

impl CpioWriter {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    /// Adds a directory.
    pub fn dir(&mut self, name: &str, perm: u32) -> &mut Self {
        self.entry(name, S_IFDIR | perm, &[], (0, 0));
        self
    }

    /// Adds a regular file.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> &mut Self {
        self.entry(name, S_IFREG | perm, data, (0, 0));
        self
    }

    /// Adds a character device node.
    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> &mut Self {
        self.entry(name, S_IFCHR | perm, &[], (major, minor));
        self
    }

    /// Ends the archive and returns it.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[], (0, 0));
        self.out
    }
}

/// The initramfs for one run, in three parts so that the (large) init
/// binary is copied once, straight from `hutch`'s own image to its
/// destination, instead of through a buffer.
pub struct Initramfs {
    /// Directories, the spec, and the init file's header.
    pub head: Vec<u8>,
    /// The init binary.
    pub init: &'static [u8],
    /// Padding after init and the trailer.
    pub tail: Vec<u8>,
}

impl Initramfs {
    /// Total size in bytes.
    pub fn len(&self) -> usize {
        self.head.len() + self.init.len() + self.tail.len()
    }

    /// Never empty; for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The parts in order.
    pub fn parts(&self) -> [&[u8]; 3] {
        [&self.head, self.init, &self.tail]
    }

    /// The archive as one buffer (tests, and engines that want a file).
    pub fn to_vec(&self) -> Vec<u8> {
        self.parts().concat()
    }
}

/// The initramfs for one run.
pub fn build(init: &'static [u8], spec: &RunSpec) -> Initramfs {
    let mut w = CpioWriter::new();
    w.dir("dev", 0o755)
        .char_dev("dev/console", 0o600, 5, 1)
        .dir("proc", 0o755)
        .dir("sys", 0o755)
        .dir("hutch", 0o755)
        .file(SPEC_PATH.trim_start_matches('/'), 0o600, &spec.encode());
    // A padding file so that init's data starts on a page boundary: the
    // native engine then maps it into the guest instead of copying it.
    let pad_header = (110 + "hutch/pad".len() + 1).next_multiple_of(4);
    let init_header = (110 + "init".len() + 1).next_multiple_of(4);
    let pad = (PAGE - (w.out.len() + pad_header + init_header) % PAGE) % PAGE;
    w.file("hutch/pad", 0o600, &vec![0u8; pad]);
    w.file("init", 0o755, &[]);
    // `file` wrote init's header with size 0: patch the size field (the 7th
    // 8-digit field after the 6-byte magic) of that last header, then let
    // the data follow it.
    let head_len = w.out.len();
    let name_len = "init".len() + 1;
    let header_at = head_len - (110 + name_len).next_multiple_of(4);
    let size_at = header_at + 6 + 6 * 8;
    w.out[size_at..size_at + 8].copy_from_slice(format!("{:08x}", init.len()).as_bytes());
    let head = std::mem::take(&mut w.out);
    // Pad init to 4 bytes, then the trailer (aligned on its own).
    let mut tail = vec![0u8; (4 - init.len() % 4) % 4];
    let trailer = CpioWriter {
        out: Vec::new(),
        ino: w.ino,
    };
    tail.extend(trailer.finish());
    Initramfs { head, init, tail }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses a newc archive back into (name, mode, data).
    fn parse(mut b: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let hex = |s: &[u8]| u32::from_str_radix(std::str::from_utf8(s).unwrap(), 16).unwrap();
        let align = |n: usize| (n + 3) & !3;
        loop {
            assert_eq!(&b[..6], b"070701");
            let mode = hex(&b[14..22]);
            let size = hex(&b[54..62]) as usize;
            let namesize = hex(&b[94..102]) as usize;
            let name = std::str::from_utf8(&b[110..110 + namesize - 1])
                .unwrap()
                .to_string();
            let data_at = align(110 + namesize);
            let data = b[data_at..data_at + size].to_vec();
            b = &b[align(data_at + size)..];
            if name == "TRAILER!!!" {
                assert!(b.is_empty());
                return out;
            }
            out.push((name, mode, data));
        }
    }

    #[test]
    fn archive_holds_init_console_and_spec() {
        let spec = RunSpec {
            detached: true,
            ..Default::default()
        };
        let a = build(b"\x7fELF-init", &spec).to_vec();
        let entries = parse(&a);
        let find = |n: &str| {
            entries
                .iter()
                .find(|e| e.0 == n)
                .unwrap_or_else(|| panic!("{n}"))
        };
        assert_eq!(find("init").2, b"\x7fELF-init");
        assert_eq!(find("init").1, S_IFREG | 0o755);
        assert_eq!(find("dev/console").1, S_IFCHR | 0o600);
        assert_eq!(RunSpec::decode(&find("hutch/spec").2).unwrap(), spec);
        // Parent directories come before their children.
        // init's data starts on a page boundary of the archive.
        let rd = build(b"\x7fELF-init", &spec);
        assert_eq!(rd.head.len() % PAGE, 0);
        let pos = |n: &str| entries.iter().position(|e| e.0 == n).unwrap();
        assert!(pos("hutch") < pos("hutch/spec"));
        assert!(pos("dev") < pos("dev/console"));
    }

    #[test]
    fn odd_sizes_are_padded() {
        let mut w = CpioWriter::new();
        w.file("a", 0o644, b"x").file("bb", 0o644, b"yyy");
        let a = w.finish();
        assert_eq!(a.len() % 4, 0);
        let e = parse(&a);
        assert_eq!(e[0].2, b"x");
        assert_eq!(e[1].2, b"yyy");
    }
}
