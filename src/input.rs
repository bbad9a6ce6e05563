//! Reading untrusted input files: open safely, read within bounds, hash what is read.
//!
//! Every byte imgc takes from a workspace may come from a hostile checkout, and
//! every byte that shapes an output must be the byte its key hashed. This module
//! is the one place that opens such a file and reads it:
//!
//! - [`resolve_inside`] resolves a workspace-relative path one component at a
//!   time, following a symlink only while every step stays inside the workspace
//!   root. A link that leaves the workspace (even one whose chain comes back in)
//!   is an error of kind [`io::ErrorKind::PermissionDenied`] carrying
//!   [`InputError::Escapes`]; the result has no symlink left in it.
//! - [`open_regular`] opens a **regular file only**: it `lstat`s first, so a FIFO,
//!   socket or device is refused without ever being opened (opening a device can
//!   have side effects; opening a FIFO blocks until a writer comes), then opens
//!   with `O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC` and checks the descriptor's
//!   `fstat` again, so a path swapped for a link or a FIFO between the two calls
//!   is refused too, never followed and never waited on.
//! - [`HashReader`] wraps any reader: it hashes what passes through (blake3,
//!   sha256, or both, in one pass) and enforces a [`Limit`]: `Exactly(n)` for a
//!   file whose size is known (from `fstat` or from a descriptor), `AtMost(n)` for
//!   a document with a cap. Reading stops at the bound; one byte past it is an
//!   error ([`InputError::TooLong`]) and an early end of an `Exactly` input is
//!   one too ([`InputError::TooShort`]), so a file that grows, shrinks or never
//!   ends (a link to `/dev/zero`) can neither fill a disk nor pass unnoticed.
//!   [`HashReader::finish`] reads whatever the consumer left (hashing it), so the
//!   hashes always cover the whole input.
//! - [`escape`] makes a name read from an input safe to print: control
//!   characters and bidirectional overrides become `\u{1b}`-style escapes.
//!
//! # How to use it
//!
//! ```text
//! hash a file (the key side):     input::hash_file(path, Algos::Blake3)           -> (Hashes, Metadata)
//! stream a file of known size:    let o = input::open_regular(path)?;
//!                                 let mut r = HashReader::new(o.file, Limit::Exactly(o.meta.len())).blake3();
//!                                 io::copy(&mut r, &mut sink)?; let h = r.finish()?;
//! read a capped document:         HashReader::new(o.file, Limit::AtMost(CAP)).blake3().sha256()
//!                                 + read_to_end, then finish()
//! verify a stored blob:           HashReader::new(file, Limit::Exactly(size)).sha256().blake3()
//! ```
//!
//! Errors are [`io::Error`]s whose message says what is wrong with the file
//! ("it is a FIFO, not a regular file", "it holds more than the expected 12
//! bytes"); the caller adds which file. [`input_error`] recovers the typed
//! [`InputError`] from one.
//!
//! # What it deliberately does not do
//!
//! - No memo, no stat-based skipping: deciding *whether* to read a file is the
//!   caller's business ([`crate::cache::FileMemo`]).
//! - No path checks of its own beyond [`resolve_inside`]: a caller that opens a
//!   path it did not resolve gets `O_NOFOLLOW` on the last component only.
//! - No retries on a changed file: a file that changes while it is read is an
//!   error; the build fails rather than store what its key does not describe.

use crate::hash::{Digest, Key, Sha256};
use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

/// How many symlinks one path may pass through (Linux's `MAXSYMLINKS`).
const MAX_LINKS: usize = 40;

/// What is wrong with an input, beyond plain IO errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("it is {0}, not a regular file")]
    NotRegular(&'static str),
    #[error("it is a symbolic link")]
    Symlink,
    #[error("it resolves outside the workspace through a symbolic link")]
    Escapes,
    #[error("it passes through more than {MAX_LINKS} symbolic links")]
    TooManyLinks,
    /// More bytes than the limit: past an exact size, or over a cap.
    #[error("{}", too_long(*limit))]
    TooLong { limit: Limit },
    /// An input of known size ended early.
    #[error("it ended after {got} of the expected {expected} bytes")]
    TooShort { got: u64, expected: u64 },
}

fn too_long(limit: Limit) -> String {
    match limit {
        Limit::Exactly(n) => format!("it holds more than the expected {n} bytes"),
        Limit::AtMost(n) => format!("it is larger than the limit of {}", human_size(n)),
    }
}

/// `4 MiB`, `1 MiB`, `512 bytes`: for limits in messages.
pub fn human_size(n: u64) -> String {
    const MIB: u64 = 1 << 20;
    const KIB: u64 = 1 << 10;
    if n >= MIB && n % MIB == 0 {
        format!("{} MiB", n / MIB)
    } else if n >= KIB && n % KIB == 0 {
        format!("{} KiB", n / KIB)
    } else {
        format!("{n} bytes")
    }
}

impl InputError {
    fn into_io(self) -> io::Error {
        let kind = match self {
            InputError::NotRegular(_) | InputError::Symlink => io::ErrorKind::InvalidInput,
            InputError::Escapes => io::ErrorKind::PermissionDenied,
            InputError::TooManyLinks => io::ErrorKind::InvalidInput,
            InputError::TooLong { .. } => io::ErrorKind::InvalidData,
            InputError::TooShort { .. } => io::ErrorKind::UnexpectedEof,
        };
        io::Error::new(kind, self)
    }
}

/// The [`InputError`] inside an IO error made by this module, if it is one.
pub fn input_error(e: &io::Error) -> Option<&InputError> {
    e.get_ref()?.downcast_ref::<InputError>()
}

/// How many bytes an input may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Exactly this many (a file of known size, a blob of a known descriptor).
    Exactly(u64),
    /// At most this many (a capped document).
    AtMost(u64),
}

impl Limit {
    fn max(self) -> u64 {
        match self {
            Limit::Exactly(n) | Limit::AtMost(n) => n,
        }
    }
}

/// A regular file opened for reading, with the `fstat` of its descriptor.
#[derive(Debug)]
pub struct Opened {
    pub file: File,
    pub meta: Metadata,
}

fn kind_name(ft: std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else {
        "a special file"
    }
}

/// Opens `path` for reading if it is a regular file, never following a symlink
/// at its last component and never blocking (see the module docs).
pub fn open_regular(path: &Path) -> io::Result<Opened> {
    let lmeta = std::fs::symlink_metadata(path)?;
    let ft = lmeta.file_type();
    if ft.is_symlink() {
        return Err(InputError::Symlink.into_io());
    }
    if !ft.is_file() {
        return Err(InputError::NotRegular(kind_name(ft)).into_io());
    }
    let file = match File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(InputError::Symlink.into_io());
        }
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(InputError::NotRegular(kind_name(meta.file_type())).into_io());
    }
    Ok(Opened { file, meta })
}

/// Resolves `rel` (relative to `root`, which must already be canonical) to a
/// path without symlinks, following each link only while every step stays
/// inside `root`. A missing component is the usual [`io::ErrorKind::NotFound`].
pub fn resolve_inside(root: &Path, rel: &Path) -> io::Result<PathBuf> {
    let mut todo: Vec<std::ffi::OsString> = Vec::new();
    push_components(&mut todo, rel)?;
    let mut cur = root.to_path_buf();
    let mut links = 0usize;
    // `todo` is a stack: the next component is at the end.
    while let Some(c) = todo.pop() {
        if c == ".." {
            if cur == root {
                return Err(InputError::Escapes.into_io());
            }
            cur.pop();
            continue;
        }
        let next = cur.join(&c);
        let meta = std::fs::symlink_metadata(&next)?;
        if !meta.file_type().is_symlink() {
            cur = next;
            continue;
        }
        links += 1;
        if links > MAX_LINKS {
            return Err(InputError::TooManyLinks.into_io());
        }
        let target = std::fs::read_link(&next)?;
        if target.is_absolute() {
            // Only a target inside the root keeps every step inside.
            let inner = target
                .strip_prefix(root)
                .map_err(|_| InputError::Escapes.into_io())?;
            cur = root.to_path_buf();
            push_components(&mut todo, inner)?;
        } else {
            push_components(&mut todo, &target)?;
        }
    }
    Ok(cur)
}

/// Pushes the components of a relative path onto a stack (last first), `.` dropped.
fn push_components(stack: &mut Vec<std::ffi::OsString>, p: &Path) -> io::Result<()> {
    let mut parts = Vec::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => parts.push("..".into()),
            Component::Normal(s) => parts.push(s.to_os_string()),
            Component::RootDir | Component::Prefix(_) => {
                return Err(InputError::Escapes.into_io());
            }
        }
    }
    stack.extend(parts.into_iter().rev());
    Ok(())
}

/// Which hashes a [`HashReader`] computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algos {
    Blake3,
    Sha256,
    Both,
}

/// What a [`HashReader`] saw: the byte count and the hashes it was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hashes {
    pub len: u64,
    pub blake3: Option<Key>,
    pub sha256: Option<Digest>,
}

/// A reader that hashes what passes through it and enforces a [`Limit`].
pub struct HashReader<R> {
    inner: R,
    blake3: Option<Box<blake3::Hasher>>,
    sha256: Option<Sha256>,
    limit: Limit,
    n: u64,
}

impl<R: Read> HashReader<R> {
    /// A reader computing no hash yet: add [`HashReader::blake3`] and/or
    /// [`HashReader::sha256`], or use [`HashReader::with`].
    pub fn new(inner: R, limit: Limit) -> HashReader<R> {
        HashReader {
            inner,
            blake3: None,
            sha256: None,
            limit,
            n: 0,
        }
    }

    /// A reader computing the hashes `hash` names.
    pub fn with(inner: R, limit: Limit, hash: Algos) -> HashReader<R> {
        let r = HashReader::new(inner, limit);
        match hash {
            Algos::Blake3 => r.blake3(),
            Algos::Sha256 => r.sha256(),
            Algos::Both => r.blake3().sha256(),
        }
    }

    pub fn blake3(mut self) -> Self {
        self.blake3 = Some(Box::new(blake3::Hasher::new()));
        self
    }

    pub fn sha256(mut self) -> Self {
        self.sha256 = Some(Sha256::new());
        self
    }

    /// Bytes read (and hashed) so far.
    pub fn bytes_read(&self) -> u64 {
        self.n
    }

    /// Reads the rest of the input (hashing it, within the limit) and returns
    /// the hashes of everything.
    pub fn finish(mut self) -> io::Result<Hashes> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match self.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Hashes {
            len: self.n,
            blake3: self.blake3.map(|h| Key(*h.finalize().as_bytes())),
            sha256: self.sha256.map(Sha256::finish),
        })
    }

    /// One read of the inner reader, retrying on `Interrupted`.
    fn inner_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.inner.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => return r,
            }
        }
    }
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let max = self.limit.max();
        if self.n >= max {
            // At the bound: the input must end here.
            let mut probe = [0u8; 1];
            return match self.inner_read(&mut probe)? {
                0 => Ok(0),
                _ => Err(InputError::TooLong { limit: self.limit }.into_io()),
            };
        }
        let want = (max - self.n).min(buf.len() as u64) as usize;
        let k = self.inner_read(&mut buf[..want])?;
        if k == 0 {
            if let Limit::Exactly(expected) = self.limit {
                return Err(InputError::TooShort {
                    got: self.n,
                    expected,
                }
                .into_io());
            }
            return Ok(0);
        }
        if let Some(h) = &mut self.blake3 {
            h.update(&buf[..k]);
        }
        if let Some(h) = &mut self.sha256 {
            h.update(&buf[..k]);
        }
        self.n += k as u64;
        Ok(k)
    }
}

/// Hashes a whole regular file (opened with [`open_regular`]); its size must not
/// change while it is read. Returns the hashes and the `fstat` taken before reading.
pub fn hash_file(path: &Path, hash: Algos) -> io::Result<(Hashes, Metadata)> {
    let o = open_regular(path)?;
    let size = o.meta.len();
    let r = HashReader::with(
        io::BufReader::with_capacity(256 * 1024, o.file),
        Limit::Exactly(size),
        hash,
    );
    Ok((r.finish()?, o.meta))
}

/// Reads a whole input into memory through a [`HashReader`] (for capped documents).
pub fn read_all<R: Read>(mut r: HashReader<R>) -> io::Result<(Vec<u8>, Hashes)> {
    let mut bytes = Vec::with_capacity(r.limit.max().min(1 << 20) as usize);
    r.read_to_end(&mut bytes)?;
    Ok((bytes, r.finish()?))
}

/// A name read from an input, made safe for a message or a terminal: control
/// characters (C0, DEL, C1) and bidirectional-text controls become `\u{..}`
/// escapes; everything else, other scripts included, is kept.
pub fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    let bad = |c: char| {
        c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !s.chars().any(bad) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if bad(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn err_of(e: &io::Error) -> InputError {
        input_error(e)
            .cloned()
            .unwrap_or_else(|| panic!("not an input error: {e}"))
    }

    #[test]
    fn hashes_match_one_shot_hashes() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut r = HashReader::with(&data[..], Limit::Exactly(data.len() as u64), Algos::Both);
        let mut first = vec![0u8; 1000];
        r.read_exact(&mut first).unwrap();
        let h = r.finish().unwrap();
        assert_eq!(h.len, data.len() as u64);
        assert_eq!(h.blake3, Some(Key::of_bytes(&data)));
        assert_eq!(h.sha256, Some(Digest::of_bytes(&data)));
        let only = HashReader::with(&data[..], Limit::AtMost(1 << 30), Algos::Blake3)
            .finish()
            .unwrap();
        assert_eq!(only.sha256, None);
        assert_eq!(only.blake3, Some(Key::of_bytes(&data)));
    }

    #[test]
    fn an_endless_input_stops_at_the_limit() {
        // `io::repeat` never ends, like `/dev/zero`: the limit must stop it.
        for limit in [
            Limit::Exactly(0),
            Limit::Exactly(4096),
            Limit::AtMost(1 << 20),
        ] {
            let e = HashReader::with(io::repeat(0), limit, Algos::Both)
                .finish()
                .unwrap_err();
            assert_eq!(err_of(&e), InputError::TooLong { limit }, "{limit:?}");
        }
        let e = read_all(HashReader::new(io::repeat(7), Limit::AtMost(10))).unwrap_err();
        assert_eq!(e.to_string(), "it is larger than the limit of 10 bytes");
        assert_eq!(
            too_long(Limit::AtMost(4 << 20)),
            "it is larger than the limit of 4 MiB"
        );
    }

    #[test]
    fn a_short_input_of_known_size_is_an_error() {
        let e = HashReader::with(&b"abc"[..], Limit::Exactly(5), Algos::Blake3)
            .finish()
            .unwrap_err();
        assert_eq!(
            err_of(&e),
            InputError::TooShort {
                got: 3,
                expected: 5
            }
        );
        // A cap is not a size: less is fine.
        let (bytes, h) = read_all(HashReader::new(&b"abc"[..], Limit::AtMost(5))).unwrap();
        assert_eq!((bytes.as_slice(), h.len), (&b"abc"[..], 3));
    }

    #[test]
    fn only_regular_files_are_opened() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        assert_eq!(open_regular(&f).unwrap().meta.len(), 1);
        let link = dir.path().join("link");
        symlink(&f, &link).unwrap();
        assert_eq!(
            err_of(&open_regular(&link).unwrap_err()),
            InputError::Symlink
        );
        assert_eq!(
            err_of(&open_regular(dir.path()).unwrap_err()),
            InputError::NotRegular("a directory")
        );
        // A FIFO is refused at once (opening it for reading would wait for a writer).
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let e = open_regular(&fifo).unwrap_err();
        assert_eq!(err_of(&e), InputError::NotRegular("a FIFO"));
        assert_eq!(e.to_string(), "it is a FIFO, not a regular file");
        assert_eq!(
            err_of(&open_regular(Path::new("/dev/zero")).unwrap_err()),
            InputError::NotRegular("a character device")
        );
        assert_eq!(
            open_regular(&dir.path().join("missing"))
                .unwrap_err()
                .kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn hash_file_hashes_a_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"hello").unwrap();
        let (h, meta) = hash_file(&f, Algos::Both).unwrap();
        assert_eq!(meta.len(), 5);
        assert_eq!(h.blake3, Some(Key::of_bytes(b"hello")));
        assert_eq!(h.sha256, Some(Digest::of_bytes(b"hello")));
    }

    #[test]
    fn links_are_followed_only_inside_the_root() {
        let outer = tempfile::tempdir().unwrap();
        let outer = outer.path().canonicalize().unwrap();
        let root = outer.join("ws");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/f"), b"x").unwrap();
        std::fs::write(outer.join("secret"), b"s").unwrap();
        symlink("a/b", root.join("rel")).unwrap();
        symlink(root.join("a"), root.join("abs")).unwrap();
        symlink("../b/f", root.join("a/b/up")).unwrap();
        symlink("../secret", root.join("out")).unwrap();
        symlink(outer.join("ws/a"), root.join("abs-in")).unwrap();
        // Out and back in: a step leaves the workspace, so it is refused.
        symlink("../ws/a/b/f", root.join("out-and-in")).unwrap();
        symlink("/dev/zero", root.join("zero")).unwrap();
        symlink("loop", root.join("loop")).unwrap();
        let want = root.join("a/b/f");
        for ok in [
            "a/b/f",
            "rel/f",
            "abs/b/f",
            "a/b/up",
            "abs-in/b/f",
            "a/../a/b/f",
        ] {
            assert_eq!(resolve_inside(&root, Path::new(ok)).unwrap(), want, "{ok}");
        }
        for bad in [
            "out",
            "out-and-in",
            "zero",
            "..",
            "a/../../secret",
            "/etc/passwd",
        ] {
            let e = resolve_inside(&root, Path::new(bad)).unwrap_err();
            assert_eq!(err_of(&e), InputError::Escapes, "{bad}");
        }
        assert_eq!(
            err_of(&resolve_inside(&root, Path::new("loop")).unwrap_err()),
            InputError::TooManyLinks
        );
        assert_eq!(
            resolve_inside(&root, Path::new("a/nope"))
                .unwrap_err()
                .kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn escape_shows_control_characters() {
        assert_eq!(escape("plain/ünïcode 名前"), "plain/ünïcode 名前");
        assert_eq!(escape("a\u{1b}[31mred"), "a\\u{1b}[31mred");
        assert_eq!(escape("x\ny\u{7f}\u{9b}"), "x\\u{a}y\\u{7f}\\u{9b}");
        assert_eq!(escape("abc\u{202e}cba"), "abc\\u{202e}cba");
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(4 << 20), "4 MiB");
        assert_eq!(human_size(1 << 10), "1 KiB");
        assert_eq!(human_size(1000), "1000 bytes");
    }
}
