//! A bounded, streaming tar reader, and the listing of a layer from it.
//!
//! Docker archives and imported layers are tars someone else wrote. The `tar`
//! crate reads a GNU long name (`L`), long link (`K`) or PAX header (`x`) whole
//! into memory before the entry it describes, whatever its size, so a 300 MB
//! extension header is 300 MB of memory; and in its raw mode (where the caller
//! would see those headers first) it no longer applies a PAX `size`, which Go's
//! `archive/tar` (Docker, containerd, BuildKit) writes for files over 8 GiB. So
//! this module walks the blocks itself and uses the crate only for what it does
//! well: [`tar::Header`] as a typed view of a 512-byte header (numeric fields,
//! ustar prefix, GNU base-256) and [`tar::PaxExtensions`] to split PAX records.
//!
//! # Rules
//!
//! - Every extension header (`L`, `K`, `x`, `g`) is checked against
//!   [`EXT_HEADER_LIMIT`] (1 MiB) **before** it is read: a path, a link target
//!   and a handful of PAX records fit many times over; anything bigger is an
//!   error naming its size, read no further.
//! - The checksum of each header must match (unsigned, or signed as some old
//!   writers computed it); a zero block ends the archive, and so does the end of
//!   the stream at a header boundary (as GNU tar and the `tar` crate allow).
//!   Extension headers with no entry after them, two of one kind before one
//!   entry, malformed PAX records and a stream ending inside a header or its
//!   data are errors.
//! - What applies to an entry, as Go's `archive/tar` does it: a GNU long name
//!   or link wins over a PAX `path`/`linkpath` (and PAX `GNU.sparse.name`),
//!   which win over the header's fields; PAX `size`, `uid` and `gid` override
//!   the header's. A PAX global header (`g`) is read within the limit and
//!   otherwise ignored, as Docker and containerd do. Old GNU sparse entries
//!   (`S`) have their extension blocks skipped so the framing stays right.
//! - Data is read through [`Scanner::data`] or skipped when the next entry is
//!   asked for. Bytes after the end of the archive are left to the caller,
//!   who hashes them: a diff_id covers the whole stream, not only the entries.
//!
//! # Listings
//!
//! [`list_layer`] turns every entry into a [`Listed`] (see [`crate::listing`]):
//! paths are normalized (no `./`, no leading or trailing `/`, no empty
//! components; the root directory is `""`), `.wh.NAME` becomes a
//! [`PathKind::Whiteout`] of the path it deletes and `.wh..wh..opq` a
//! [`PathKind::Opaque`] of its directory; other `.wh..wh.` names (AUFS
//! metadata, which Docker skips) are listed as [`PathKind::Other`] as stored. A
//! path with a `..` component is an error (unpacking it would write outside the
//! image root; Docker refuses it too). Names that are not UTF-8 are listed with
//! U+FFFD in place of the bad bytes.

use crate::listing::{Listed, Listing, PathKind};
use std::io::{self, Read};

/// The most bytes one extension header (`L`, `K`, `x`, `g`) may hold.
pub const EXT_HEADER_LIMIT: u64 = 1 << 20;

const BLOCK: u64 = 512;

/// One entry of a tar, with its extension headers applied.
#[derive(Debug, Clone)]
pub struct Member {
    pub path: Vec<u8>,
    pub link: Option<Vec<u8>>,
    pub kind: tar::EntryType,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Bytes of data that follow the header.
    pub size: u64,
}

impl Member {
    pub fn path_lossy(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Reads a tar stream entry by entry; see the module docs.
pub struct Scanner<R> {
    r: R,
    /// Data bytes of the current entry not read yet.
    left: u64,
    /// Padding after them.
    pad: u64,
    /// Offset in the stream, for messages.
    pos: u64,
    ended: bool,
}

impl<R: Read> Scanner<R> {
    pub fn new(r: R) -> Scanner<R> {
        Scanner {
            r,
            left: 0,
            pad: 0,
            pos: 0,
            ended: false,
        }
    }

    /// The underlying reader, positioned after what the scanner consumed.
    pub fn into_inner(self) -> R {
        self.r
    }

    /// Reads exactly `buf.len()` bytes; `Ok(false)` on a clean end of stream
    /// before the first byte.
    fn fill(&mut self, buf: &mut [u8], what: &str) -> io::Result<bool> {
        let mut n = 0;
        while n < buf.len() {
            match self.r.read(&mut buf[n..]) {
                Ok(0) if n == 0 => return Ok(false),
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the archive ends inside {what} at byte {}", self.pos),
                    ));
                }
                Ok(k) => {
                    n += k;
                    self.pos += k as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    fn skip(&mut self, mut n: u64, what: &str) -> io::Result<()> {
        let mut buf = [0u8; 8192];
        while n > 0 {
            let k = n.min(buf.len() as u64) as usize;
            if !self.fill(&mut buf[..k], what)? {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the archive ends inside {what} at byte {}", self.pos),
                ));
            }
            n -= k as u64;
        }
        Ok(())
    }

    /// The next entry, or `None` at the end of the archive. Data of the
    /// previous entry that was not read is skipped.
    pub fn next_member(&mut self) -> io::Result<Option<Member>> {
        if self.ended {
            return Ok(None);
        }
        let (left, pad) = (self.left, self.pad);
        self.left = 0;
        self.pad = 0;
        self.skip(left + pad, "an entry's data")?;

        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut pax: Option<Vec<u8>> = None;
        let pending = |n: &Option<Vec<u8>>, l: &Option<Vec<u8>>, p: &Option<Vec<u8>>| {
            n.is_some() || l.is_some() || p.is_some()
        };
        loop {
            let at = self.pos;
            let mut block = [0u8; BLOCK as usize];
            if !self.fill(&mut block, "a header")? || block.iter().all(|b| *b == 0) {
                if pending(&long_name, &long_link, &pax) {
                    return Err(bad(format!(
                        "extension headers at byte {at} describe an entry that is not there"
                    )));
                }
                self.ended = true;
                return Ok(None);
            }
            check_checksum(&block, at)?;
            let h = tar::Header::from_byte_slice(&block);
            let kind = h.entry_type();
            let old = h.as_old();
            let header_size = numeric(&old.size, || h.entry_size())
                .map_err(|e| bad(format!("header at byte {at}: bad size: {e}")))?;
            let ext = match kind {
                tar::EntryType::GNULongName => Some("GNU long name"),
                tar::EntryType::GNULongLink => Some("GNU long link"),
                tar::EntryType::XHeader => Some("PAX"),
                tar::EntryType::XGlobalHeader => Some("PAX global"),
                _ => None,
            };
            if let Some(what) = ext {
                if header_size > EXT_HEADER_LIMIT {
                    return Err(bad(format!(
                        "the {what} header at byte {at} holds {header_size} bytes, over the limit of {}",
                        crate::input::human_size(EXT_HEADER_LIMIT)
                    )));
                }
                let mut data = vec![0u8; header_size as usize];
                let what_data = format!("a {what} header");
                if !self.fill(&mut data, &what_data)? && header_size > 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the archive ends inside {what_data} at byte {}", self.pos),
                    ));
                }
                self.skip(padding(header_size), &what_data)?;
                let slot = match kind {
                    tar::EntryType::GNULongName => &mut long_name,
                    tar::EntryType::GNULongLink => &mut long_link,
                    tar::EntryType::XHeader => &mut pax,
                    _ => {
                        // Global records: validated, then ignored.
                        pax_records(&data, at)?;
                        continue;
                    }
                };
                if slot.is_some() {
                    return Err(bad(format!(
                        "two {what} headers for one entry (the second at byte {at})"
                    )));
                }
                if kind == tar::EntryType::XHeader {
                    pax_records(&data, at)?;
                } else if let Some(nul) = data.iter().position(|b| *b == 0) {
                    data.truncate(nul);
                }
                *slot = Some(data);
                continue;
            }

            let records = match &pax {
                Some(p) => pax_records(p, at)?,
                None => Vec::new(),
            };
            let record = |key: &str| {
                records
                    .iter()
                    .rev()
                    .find(|(k, _)| k.as_slice() == key.as_bytes())
                    .map(|(_, v)| v.clone())
            };
            let number = |key: &str| -> io::Result<Option<u64>> {
                record(key)
                    .map(|v| {
                        std::str::from_utf8(&v)
                            .ok()
                            .and_then(|s| s.parse::<u64>().ok())
                            .ok_or_else(|| {
                                bad(format!("PAX record `{key}` at byte {at} is not a number"))
                            })
                    })
                    .transpose()
            };
            let size = number("size")?.unwrap_or(header_size);
            let field = |r: io::Result<u64>, name: &str| {
                r.map_err(|e| bad(format!("header at byte {at}: bad {name}: {e}")))
            };
            let uid = match number("uid")? {
                Some(v) => v,
                None => field(numeric(&old.uid, || h.uid()), "uid")?,
            };
            let gid = match number("gid")? {
                Some(v) => v,
                None => field(numeric(&old.gid, || h.gid()), "gid")?,
            };
            let mode =
                field(numeric(&old.mode, || h.mode().map(u64::from)), "mode")? as u32 & 0o7777;
            let path = long_name
                .or_else(|| record("GNU.sparse.name"))
                .or_else(|| record("path"))
                .unwrap_or_else(|| h.path_bytes().into_owned());
            let link = long_link
                .or_else(|| record("linkpath"))
                .or_else(|| h.link_name_bytes().map(|l| l.into_owned()));
            if kind == tar::EntryType::GNUSparse
                && h.as_gnu().is_some_and(tar::GnuHeader::is_extended)
            {
                loop {
                    let mut ext = tar::GnuExtSparseHeader::new();
                    if !self.fill(ext.as_mut_bytes(), "a GNU sparse header")? {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("the archive ends inside a GNU sparse header at byte {at}"),
                        ));
                    }
                    if !ext.is_extended() {
                        break;
                    }
                }
            }
            self.left = size;
            self.pad = padding(size);
            return Ok(Some(Member {
                path,
                link,
                kind,
                mode,
                uid,
                gid,
                size,
            }));
        }
    }

    /// The data of the entry [`Scanner::next_member`] returned last.
    pub fn data(&mut self) -> Data<'_, R> {
        Data { s: self }
    }
}

/// Reads the data of one entry; the end of the stream inside it is an error.
pub struct Data<'a, R> {
    s: &'a mut Scanner<R>,
}

impl<R: Read> Read for Data<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.s.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = self.s.left.min(buf.len() as u64) as usize;
        let n = self.s.r.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the archive ends inside an entry's data at byte {}",
                    self.s.pos
                ),
            ));
        }
        self.s.left -= n as u64;
        self.s.pos += n as u64;
        Ok(n)
    }
}

/// A numeric header field: empty (only NULs and spaces) is 0, as Go's
/// `archive/tar` reads it (some writers leave unused fields empty); anything
/// else is parsed by the `tar` crate (octal, or GNU base-256).
fn numeric(raw: &[u8], parse: impl FnOnce() -> io::Result<u64>) -> io::Result<u64> {
    if raw.iter().all(|b| *b == 0 || *b == b' ') {
        Ok(0)
    } else {
        parse()
    }
}

fn padding(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

fn check_checksum(block: &[u8; BLOCK as usize], at: u64) -> io::Result<()> {
    let h = tar::Header::from_byte_slice(block);
    let stored = h.cksum().map_err(|_| {
        bad(format!(
            "not a tar header at byte {at} (bad checksum field)"
        ))
    })?;
    let (mut unsigned, mut signed) = (0u32, 0i64);
    for (i, b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { *b };
        unsigned += u32::from(b);
        signed += i64::from(b as i8);
    }
    if stored == unsigned || i64::from(stored) == signed {
        Ok(())
    } else {
        Err(bad(format!(
            "not a tar header at byte {at} (checksum mismatch)"
        )))
    }
}

/// `(key, value)` of every PAX record; a malformed record is an error.
fn pax_records(data: &[u8], at: u64) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    // Trailing NULs pad some writers' PAX data.
    let end = data.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    tar::PaxExtensions::new(&data[..end])
        .map(|r| {
            r.map(|e| (e.key_bytes().to_vec(), e.value_bytes().to_vec()))
                .map_err(|_| bad(format!("malformed PAX record in the header at byte {at}")))
        })
        .collect()
}

/// The normalized path of an entry: `./a//b/` → `a/b`; `..` is refused.
pub fn normalize_path(raw: &[u8]) -> Result<String, String> {
    let s = String::from_utf8_lossy(raw);
    let mut parts = Vec::new();
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                return Err(format!(
                    "the entry `{}` leaves the image root",
                    crate::input::escape(&s)
                ));
            }
            c => parts.push(c),
        }
    }
    Ok(parts.join("/"))
}

/// The listing entry of one member of a layer.
pub fn listed(m: &Member) -> Result<Listed, String> {
    let path = normalize_path(&m.path)?;
    let (dir, name) = match path.rsplit_once('/') {
        Some((d, n)) => (d, n),
        None => ("", path.as_str()),
    };
    let join = |n: &str| {
        if dir.is_empty() {
            n.to_string()
        } else {
            format!("{dir}/{n}")
        }
    };
    let uid =
        u32::try_from(m.uid).map_err(|_| format!("`{}` has uid {}", escaped(&path), m.uid))?;
    let gid =
        u32::try_from(m.gid).map_err(|_| format!("`{}` has gid {}", escaped(&path), m.gid))?;
    let (path, kind) = if name == ".wh..wh..opq" {
        (dir.to_string(), PathKind::Opaque)
    } else if name.starts_with(".wh..wh.") {
        (path.clone(), PathKind::Other)
    } else if let Some(deleted) = name.strip_prefix(".wh.").filter(|d| !d.is_empty()) {
        (join(deleted), PathKind::Whiteout)
    } else {
        let kind = match m.kind {
            tar::EntryType::Directory => PathKind::Dir,
            // Old (v7) archives mark directories with a trailing slash only.
            tar::EntryType::Regular if m.path.ends_with(b"/") => PathKind::Dir,
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                PathKind::File
            }
            tar::EntryType::Symlink => PathKind::Symlink,
            tar::EntryType::Link => PathKind::Hardlink,
            _ => PathKind::Other,
        };
        (path.clone(), kind)
    };
    let target = match kind {
        PathKind::Symlink | PathKind::Hardlink => m
            .link
            .as_ref()
            .map(|l| String::from_utf8_lossy(l).into_owned()),
        _ => None,
    };
    Ok(Listed {
        path,
        kind,
        mode: m.mode,
        uid,
        gid,
        target,
    })
}

fn escaped(s: &str) -> String {
    crate::input::escape(s).into_owned()
}

/// Lists every entry of a layer's (uncompressed) tar stream and returns the
/// reader after the end of the archive, for the caller to drain and hash.
pub fn list_layer<R: Read>(r: R) -> io::Result<(Listing, R)> {
    let mut s = Scanner::new(r);
    let mut entries = Vec::new();
    while let Some(m) = s.next_member()? {
        entries.push(listed(&m).map_err(bad)?);
    }
    Ok((Listing { entries }, s.into_inner()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        // Raw bytes: `set_path` refuses some of the names these tests need.
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o755);
        h.set_uid(10);
        h.set_gid(20);
        h.set_cksum();
        h
    }

    fn push(out: &mut Vec<u8>, h: &tar::Header, data: &[u8]) {
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len() + padding(data.len() as u64) as usize, 0);
    }

    fn pax(records: &[(&str, &str)]) -> Vec<u8> {
        let mut body = Vec::new();
        for (k, v) in records {
            let rest = k.len() + v.len() + 3;
            let mut len = rest + 1;
            while len != rest + len.to_string().len() {
                len = rest + len.to_string().len();
            }
            body.extend_from_slice(format!("{len} {k}={v}\n").as_bytes());
        }
        body
    }

    fn names(bytes: &[u8]) -> Vec<(String, PathKind)> {
        let (l, _) = list_layer(bytes).unwrap();
        l.entries.into_iter().map(|e| (e.path, e.kind)).collect()
    }

    #[test]
    fn lists_kinds_whiteouts_and_normalized_paths() {
        let mut t = Vec::new();
        push(&mut t, &header("./", tar::EntryType::Directory, 0), b"");
        push(&mut t, &header("./etc/", tar::EntryType::Directory, 0), b"");
        push(
            &mut t,
            &header("etc//hosts", tar::EntryType::Regular, 3),
            b"abc",
        );
        let mut l = header("lib", tar::EntryType::Symlink, 0);
        l.set_link_name("usr/lib").unwrap();
        l.set_cksum();
        push(&mut t, &l, b"");
        push(
            &mut t,
            &header("var/.wh.cache", tar::EntryType::Regular, 0),
            b"",
        );
        push(
            &mut t,
            &header("opt/.wh..wh..opq", tar::EntryType::Regular, 0),
            b"",
        );
        push(
            &mut t,
            &header(".wh..wh..opq", tar::EntryType::Regular, 0),
            b"",
        );
        push(
            &mut t,
            &header(".wh..wh.plnk", tar::EntryType::Directory, 0),
            b"",
        );
        push(&mut t, &header("dev/null", tar::EntryType::Char, 0), b"");
        t.extend_from_slice(&[0u8; 1024]);
        t.extend_from_slice(b"trailing bytes are the caller's");
        let (listing, rest) = list_layer(&t[..]).unwrap();
        // The scanner stops at the first zero block; the rest is the caller's.
        assert_eq!(rest.len(), 512 + 31);
        assert!(rest.ends_with(b"trailing bytes are the caller's"));
        let got: Vec<(&str, PathKind)> = listing
            .entries
            .iter()
            .map(|e| (e.path.as_str(), e.kind))
            .collect();
        assert_eq!(
            got,
            [
                ("", PathKind::Dir),
                ("etc", PathKind::Dir),
                ("etc/hosts", PathKind::File),
                ("lib", PathKind::Symlink),
                ("var/cache", PathKind::Whiteout),
                ("opt", PathKind::Opaque),
                ("", PathKind::Opaque),
                (".wh..wh.plnk", PathKind::Other),
                ("dev/null", PathKind::Other),
            ]
        );
        let lib = &listing.entries[3];
        assert_eq!(lib.target.as_deref(), Some("usr/lib"));
        assert_eq!((lib.mode, lib.uid, lib.gid), (0o755, 10, 20));
        assert_eq!(listing.entries[2].target, None);
    }

    #[test]
    fn pax_and_gnu_extensions_apply_to_the_next_entry() {
        let long = "d/".repeat(80) + "file";
        let mut t = Vec::new();
        let body = pax(&[("path", &long), ("uid", "70000"), ("size", "5")]);
        push(
            &mut t,
            &header("././@PaxHeader", tar::EntryType::XHeader, body.len() as u64),
            &body,
        );
        // The header's own size field says 0; PAX `size` says 5 and must frame the data.
        push(
            &mut t,
            &header("short", tar::EntryType::Regular, 0),
            b"12345",
        );
        let mut name = long.clone().into_bytes();
        name.push(0);
        push(
            &mut t,
            &header(
                "././@LongLink",
                tar::EntryType::GNULongName,
                name.len() as u64,
            ),
            &name,
        );
        let mut target = b"/very/long/target".to_vec();
        target.push(0);
        push(
            &mut t,
            &header(
                "././@LongLink",
                tar::EntryType::GNULongLink,
                target.len() as u64,
            ),
            &target,
        );
        push(&mut t, &header("x", tar::EntryType::Symlink, 0), b"");
        let g = pax(&[("comment", "git")]);
        push(
            &mut t,
            &header(
                "pax_global_header",
                tar::EntryType::XGlobalHeader,
                g.len() as u64,
            ),
            &g,
        );
        push(&mut t, &header("after", tar::EntryType::Regular, 0), b"");
        let (l, _) = list_layer(&t[..]).unwrap();
        assert_eq!(l.entries.len(), 3);
        assert_eq!(l.entries[0].path, long);
        assert_eq!(l.entries[0].uid, 70000);
        assert_eq!(l.entries[1].path, long);
        assert_eq!(l.entries[1].target.as_deref(), Some("/very/long/target"));
        assert_eq!(l.entries[2].path, "after");
    }

    #[test]
    fn member_data_is_read_within_its_size() {
        let mut t = Vec::new();
        push(&mut t, &header("a", tar::EntryType::Regular, 3), b"abc");
        push(&mut t, &header("b", tar::EntryType::Regular, 2), b"de");
        let mut s = Scanner::new(&t[..]);
        let a = s.next_member().unwrap().unwrap();
        assert_eq!(a.size, 3);
        let b = s.next_member().unwrap().unwrap(); // a's data skipped
        assert_eq!(b.path, b"b");
        let mut data = Vec::new();
        s.data().read_to_end(&mut data).unwrap();
        assert_eq!(data, b"de");
        assert!(s.next_member().unwrap().is_none()); // end of stream at a boundary
    }

    #[test]
    fn oversized_extension_headers_are_refused_before_reading() {
        for kind in [
            tar::EntryType::XHeader,
            tar::EntryType::XGlobalHeader,
            tar::EntryType::GNULongName,
            tar::EntryType::GNULongLink,
        ] {
            // Only the header exists: the 300 MB it announces are never read.
            let h = header("././@PaxHeader", kind, 300 << 20);
            let err = list_layer(&h.as_bytes()[..]).unwrap_err();
            assert!(
                err.to_string()
                    .contains("holds 314572800 bytes, over the limit of 1 MiB"),
                "{kind:?}: {err}"
            );
        }
        // At the limit it is fine.
        let mut n = EXT_HEADER_LIMIT as usize - 20;
        let body = loop {
            let body = pax(&[("comment", &"x".repeat(n))]);
            match body.len().cmp(&(EXT_HEADER_LIMIT as usize)) {
                std::cmp::Ordering::Less => n += 1,
                std::cmp::Ordering::Greater => n -= 1,
                std::cmp::Ordering::Equal => break body,
            }
        };
        let mut t = Vec::new();
        push(
            &mut t,
            &header("g", tar::EntryType::XGlobalHeader, body.len() as u64),
            &body,
        );
        push(&mut t, &header("f", tar::EntryType::Regular, 0), b"");
        assert_eq!(names(&t), [("f".to_string(), PathKind::File)]);
    }

    #[test]
    fn malformed_archives_are_errors() {
        let mut good = Vec::new();
        push(&mut good, &header("a", tar::EntryType::Regular, 3), b"abc");
        // Bad checksum.
        let mut t = good.clone();
        t[0] = b'b';
        assert!(
            list_layer(&t[..])
                .unwrap_err()
                .to_string()
                .contains("checksum")
        );
        // Truncated inside the data, and inside a header.
        assert!(list_layer(&good[..514]).is_err());
        assert!(list_layer(&good[..100]).is_err());
        // An extension header with nothing after it.
        let mut t = Vec::new();
        let body = pax(&[("path", "x")]);
        push(
            &mut t,
            &header("p", tar::EntryType::XHeader, body.len() as u64),
            &body,
        );
        t.extend_from_slice(&[0u8; 1024]);
        assert!(
            list_layer(&t[..])
                .unwrap_err()
                .to_string()
                .contains("not there")
        );
        // A malformed PAX record.
        let mut t = Vec::new();
        push(
            &mut t,
            &header("p", tar::EntryType::XHeader, 9),
            b"99 path=x",
        );
        push(&mut t, &header("a", tar::EntryType::Regular, 0), b"");
        assert!(
            list_layer(&t[..])
                .unwrap_err()
                .to_string()
                .contains("malformed")
        );
        // A path leaving the root.
        let mut t = Vec::new();
        push(
            &mut t,
            &header("a/../../etc/passwd", tar::EntryType::Regular, 0),
            b"",
        );
        let e = list_layer(&t[..]).unwrap_err().to_string();
        assert!(e.contains("leaves the image root"), "{e}");
        // Garbage is never a panic.
        for n in [1usize, 511, 512, 513, 4096] {
            let junk: Vec<u8> = (0..n).map(|i| (i * 7 + 3) as u8).collect();
            assert!(list_layer(&junk[..]).is_err(), "{n}");
        }
    }

    #[test]
    fn an_empty_stream_is_an_empty_layer() {
        assert!(names(b"").is_empty());
        assert!(names(&[0u8; 1024]).is_empty());
    }
}
