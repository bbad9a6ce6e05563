//! Reading a `.deb` into the entries of one package's layer.
//!
//! [`package_layer`] turns a Debian binary package into a list of
//! [`crate::layer::Entry`]s, normalized by [`crate::layer::normalize`], so that
//! [`crate::layer::write_layer`] makes the same blob of the same package on
//! every machine: every image of the monorepo that uses `libc6` shares that
//! layer byte for byte. The layer holds the package's `data.tar` plus the
//! package's entry in the dpkg database that scanners read.
//!
//! # The archive
//!
//! A `.deb` is an `ar` archive: `debian-binary` (`2.0\n`), then
//! `control.tar[.gz|.xz|.zst]`, then `data.tar[.gz|.xz|.zst]`, in that order
//! (as dpkg requires); members whose name starts with `_` are skipped, as dpkg
//! does; any other member is an error. The `ar` framing is read here (60-byte
//! headers, decimal sizes, even padding) rather than by a crate, so that a
//! member that ends early is an error rather than a short read, and nothing is
//! ever held whole: the control and data tars are decompressed as they stream
//! (flate2's multi-member gzip, liblzma with a 256 MiB memory limit, zstd
//! with its default 128 MiB window limit) and walked by the bounded tar
//! reader of imports ([`crate::import::scan`]: checksums, extension headers
//! of at most 1 MiB, PAX size/uid/gid, truncation). After the data tar's end
//! the rest of the member is drained, so the compressor's checksums are
//! checked and a truncated file is noticed. The control paragraph is parsed
//! with the `debian-packaging` crate (fields, the version syntax).
//!
//! # What becomes an entry
//!
//! | in `data.tar` | in the layer |
//! |---|---|
//! | regular file | a regular file with the same bytes, mode (setuid, setgid and sticky bits included), numeric uid/gid |
//! | directory | a directory, same mode and owner (the root `./` itself is dropped: a layer never sets `/`) |
//! | symlink | a symlink with the same target (see merged /usr for the one rewrite) |
//! | hard link | a regular file with the same bytes as the earlier entry it names, and that entry's mode and owner: layers carry no hard links (the layer writer's format has none), and dpkg packages hardly use them |
//! | device node, FIFO, sparse file | an error ([`Code::Unsupported`]): a package that needs one makes it in a maintainer script, which is not run here |
//! | a name with a `.wh.` component | an error: an unpacker would read it as a whiteout and delete a lower layer's file |
//!
//! Paths are normalized (`./usr/bin/x` → `usr/bin/x`, `//` collapsed); `..`, a
//! name that is not UTF-8, and two different entries for one path are errors.
//! Names of users and groups in the tar are ignored (numbers only, as in every
//! imgc layer); mtimes are replaced by the layer's source-date-epoch.
//!
//! # Bounds
//!
//! The package's file contents are held in memory until the layer is written
//! (each becomes an [`EntryData::Bytes`]), so [`Limits`] bound what one `.deb`
//! may make: the number of entries, the total bytes of file contents
//! (materialized hard links included), the length of a path or link target, and
//! the decompressed size of each tar stream. The defaults fit every package of
//! Debian 12 many times over; a hostile `.deb` meets a [`Code::Limit`] error
//! before it meets the allocator.
//!
//! # Merged /usr
//!
//! Debian 12 systems are merged-/usr: `/bin`, `/sbin`, `/lib`, `/lib64` (and
//! `/lib32`, `/libx32`, `/libo32` where they exist) are symlinks into `/usr`,
//! as in distroless. Packages still ship some files under the old names
//! (`libc6` has `/lib/x86_64-linux-gnu/libc.so.6` and
//! `/lib64/ld-linux-x86-64.so.2`). A layer holding a real `lib/` directory would
//! *replace* the base's `/lib` symlink with a directory (see "Only what the
//! spec declares" in [`crate::layer`]), and every library reached through it
//! would vanish. So the package layer rewrites those paths to their `/usr`
//! names (`lib/x` → `usr/lib/x`; a `lib/` directory entry becomes `usr/lib/`),
//! and [`merged_usr_links`] gives the base's symlinks (`bin -> usr/bin`,
//! `lib -> usr/lib`, `lib64 -> usr/lib64`, `sbin -> usr/sbin`) so the old paths
//! keep working (the ELF interpreter `/lib64/ld-linux-x86-64.so.2` included).
//! [`PackageLayer::aliased`] says which of the old top-level names a package
//! used, so a base can add a link for the rarer ones ([`merged_usr_link`]).
//!
//! Symlink targets are kept as written, with one exception: a *relative*
//! target of a moved symlink whose meaning the move changed (one climbing out
//! through `..`) is recomputed to point at the same (merged) place from the new
//! location. Absolute targets (`/lib/x86_64-linux-gnu/...`) are kept: the base's
//! links resolve them. A package that ships both `lib/x` and `usr/lib/x` (which
//! Debian's policy forbids) is an error; the same directory under both names
//! is kept once, with the `/usr` entry's mode and owner.
//!
//! # The dpkg database, for scanners
//!
//! Maintainer scripts do not run, so there is no `/var/lib/dpkg/status`. As
//! distroless does (its `PACKAGE_METADATA.md`), each package layer holds:
//!
//! - `var/lib/dpkg/status.d/<package>`: the `.deb`'s control paragraph as the
//!   package ships it, with `Status: install ok installed` inserted after the
//!   `Package` field (trivy, grype and syft read every file of `status.d/`;
//!   trivy skips a paragraph whose status is `deinstall` or `purge`, and a
//!   status is what dpkg itself would write). A control file that already has
//!   a `Status` field is an error.
//! - `var/lib/dpkg/status.d/<package>.md5sums`: the control tar's `md5sums`
//!   (when the package has one), each path rewritten for merged /usr so it
//!   names the file in the image. trivy and syft read it to know which files
//!   a package installed (distroless images have no `info/*.list`).
//!
//! Both files are `0644`, owned by root. Their parent directories are not
//! declared (as for any layer, the unpacker creates them).
//!
//! # What it deliberately does not do
//!
//! - Run maintainer scripts (`preinst`, `postinst`, ...), process triggers or
//!   register conffiles: conffiles are plain files of the layer. What images
//!   need from the scripts (the CA bundle, `/etc/localtime`, users) is made
//!   declaratively elsewhere.
//! - Check the files against `md5sums` (the `.deb` is verified by sha256 against
//!   the lock before it is read), or check dependencies (the resolver does).
//! - Fetch anything: [`super::fetch`] puts the `.deb` in the store.
//!
//! Anything that changes what this module makes from a `.deb` must change
//! [`RECIPE`], which package-layer keys include.

use crate::cas::Cas;
use crate::hash::{Digest, Sha256};
use crate::import::scan::{Member, Scanner};
use crate::input::escape;
use crate::layer::{self, Entry, EntryData, LayerError};
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{self, BufReader, Read};
use std::rc::Rc;

/// Version of what [`package_layer`] makes from a `.deb` (paths, entries,
/// status files): part of package-layer keys. Bump it on any change of output.
pub const RECIPE: &str = "deb-layer-1";

/// The top-level directories that are symlinks into `/usr` on a merged-/usr
/// system (Debian's `usrmerge` list).
pub const ALIASED_DIRS: [&str; 7] = ["bin", "lib", "lib32", "lib64", "libo32", "libx32", "sbin"];

/// The links every merged-/usr base has (Debian 12 amd64, distroless).
const BASE_LINKS: [&str; 4] = ["bin", "lib", "lib64", "sbin"];

/// Where the status paragraph and md5sums of each package go.
pub const STATUS_DIR: &str = "var/lib/dpkg/status.d";

/// The largest `debian-binary` member.
const DEBIAN_BINARY_LIMIT: u64 = 64;
/// The most bytes the decompressed control tar may hold.
const CONTROL_TAR_LIMIT: u64 = 64 << 20;
/// The largest `control` file.
const CONTROL_LIMIT: u64 = 1 << 20;
/// The largest `md5sums` file.
const MD5SUMS_LIMIT: u64 = 32 << 20;
/// liblzma's memory limit for one `.xz` member (xz -9 needs 65 MiB).
const XZ_MEMLIMIT: u64 = 256 << 20;

/// Stable error codes of this module and [`super::fetch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// E080: not a well-formed `.deb` (truncated, bad `ar` or tar framing, a
    /// tar that lies about sizes, a bad control paragraph or md5sums).
    Malformed,
    /// E081: a `.deb` beyond [`Limits`].
    Limit,
    /// E082: something a package layer cannot hold (a device node, a FIFO, a
    /// whiteout name, an unknown compression).
    Unsupported,
    /// E083: the entries do not make a layer (two different entries for one
    /// path, also after merged-/usr rewriting).
    Conflict,
    /// E084: the `.deb` could not be read (an IO error of the file itself).
    Read,
    /// E085: a download failed (connection, HTTP status, store IO).
    Download,
    /// E086: a download or a stored `.deb` does not have the size or sha256
    /// the lock gives.
    Mismatch,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Malformed => "E080",
            Code::Limit => "E081",
            Code::Unsupported => "E082",
            Code::Conflict => "E083",
            Code::Read => "E084",
            Code::Download => "E085",
            Code::Mismatch => "E086",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a `.deb` could not be made into a layer. `deb` names the package file
/// (as the caller calls it: its file name in the repository, or a path).
#[derive(Debug, thiserror::Error)]
#[error("{code} `{deb}`: {message}")]
pub struct DebError {
    pub code: Code,
    pub deb: String,
    pub message: String,
}

/// Bounds on what one `.deb` may make; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Entries in `data.tar` (directories included).
    pub max_entries: u64,
    /// Bytes of file contents in the layer (hard links count again).
    pub max_content: u64,
    /// Bytes of a path or a link target.
    pub max_path: usize,
}

impl Default for Limits {
    /// 200,000 entries, 2 GiB of contents, 4096-byte paths (`PATH_MAX`).
    fn default() -> Self {
        Limits {
            max_entries: 200_000,
            max_content: 2 << 30,
            max_path: 4096,
        }
    }
}

impl Limits {
    /// The most bytes the decompressed data tar may hold: the contents plus
    /// headers, padding and extension headers for every entry.
    fn max_data_tar(&self) -> u64 {
        self.max_content
            .saturating_add(self.max_entries.saturating_mul(4096))
            .saturating_add(64 << 20)
    }
}

/// The fields of a package's control paragraph that the layer needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Control {
    pub package: String,
    pub version: String,
    pub architecture: String,
    /// The paragraph as the package ships it (lines ending with `\n`,
    /// trailing blank lines dropped).
    pub paragraph: String,
}

/// One package's layer: its entries (normalized, ready for
/// [`crate::layer::write_layer`]) and what was learned on the way.
#[derive(Debug, Clone)]
pub struct PackageLayer {
    pub control: Control,
    pub entries: Vec<Entry>,
    /// The top-level directories of [`ALIASED_DIRS`] the package shipped
    /// paths under (rewritten to `/usr`), e.g. `{"lib", "lib64"}` for libc6.
    pub aliased: BTreeSet<String>,
    /// The data tar's compression: `""`, `.gz`, `.xz` or `.zst`.
    pub data_compression: String,
}

/// The base's merged-/usr symlinks: `bin -> usr/bin`, `lib -> usr/lib`,
/// `lib64 -> usr/lib64`, `sbin -> usr/sbin` (mode 0777, root), as on Debian 12
/// and in distroless.
pub fn merged_usr_links() -> Vec<Entry> {
    BASE_LINKS
        .iter()
        .filter_map(|d| merged_usr_link(d))
        .collect()
}

/// The merged-/usr symlink for one of [`ALIASED_DIRS`] (`lib32 -> usr/lib32`),
/// `None` for any other name.
pub fn merged_usr_link(dir: &str) -> Option<Entry> {
    ALIASED_DIRS.contains(&dir).then(|| Entry {
        path: dir.to_string(),
        data: EntryData::Symlink(format!("usr/{dir}")),
        mode: 0o777,
        uid: 0,
        gid: 0,
    })
}

/// The merged-/usr name of `path` (normalized, relative to `/`), or `None`
/// when it is not under one of [`ALIASED_DIRS`].
pub fn merged_path(path: &str) -> Option<String> {
    let top = path.split('/').next().unwrap_or("");
    ALIASED_DIRS.contains(&top).then(|| format!("usr/{path}"))
}

/// Reads the `.deb` stored in `cas` as `digest` (its sha256, from the lock) and
/// makes its layer. The whole blob is hashed as it is read (the rest after the
/// data tar too), and a blob that is not `digest` is an error: the store is
/// trusted only once verified.
pub fn package_layer_from_cas(
    cas: &Cas,
    digest: &Digest,
    deb: &str,
    limits: &Limits,
) -> Result<PackageLayer, DebError> {
    let (file, _) = cas.open_blob(digest).map_err(|e| DebError {
        code: Code::Read,
        deb: deb.to_string(),
        message: format!("cannot open the stored package {digest}: {e}"),
    })?;
    let mut hashing = Sha256Reader {
        inner: BufReader::with_capacity(256 * 1024, file),
        sha: Sha256::new(),
    };
    let layer = package_layer(&mut hashing, deb, limits)?;
    io::copy(&mut hashing, &mut io::sink()).map_err(|e| DebError {
        code: Code::Read,
        deb: deb.to_string(),
        message: format!("cannot read the stored package {digest}: {e}"),
    })?;
    let actual = hashing.sha.finish();
    if actual != *digest {
        return Err(DebError {
            code: Code::Mismatch,
            deb: deb.to_string(),
            message: format!("the stored package is damaged: expected {digest}, found {actual}"),
        });
    }
    Ok(layer)
}

struct Sha256Reader<R> {
    inner: R,
    sha: Sha256,
}

impl<R: Read> Read for Sha256Reader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(&buf[..n]);
        Ok(n)
    }
}

/// Makes the layer of the `.deb` read from `r` (named `deb` in messages): the
/// data tar's entries, merged-/usr rewritten, plus the package's
/// `status.d` files, normalized. Reads `r` up to the end of the data member.
pub fn package_layer<R: Read>(r: R, deb: &str, limits: &Limits) -> Result<PackageLayer, DebError> {
    let state = Rc::new(State::default());
    let src = Source {
        r,
        state: state.clone(),
    };
    read_package(src, limits, &state).map_err(|e| e.into_error(deb, &state))
}

/// What went wrong under a decompressor, which only passes `io::Error`s on.
#[derive(Default)]
struct State {
    /// The underlying reader failed (an IO error, not the format).
    io_failed: Cell<bool>,
    /// A decompressed stream went over its cap.
    over: Cell<Option<&'static str>>,
}

/// The `.deb` itself: remembers whether reading it failed.
struct Source<R> {
    r: R,
    state: Rc<State>,
}

impl<R: Read> Read for Source<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.r.read(buf).inspect_err(|e| {
            if e.kind() != io::ErrorKind::Interrupted {
                self.state.io_failed.set(true);
            }
        })
    }
}

/// An error on the way, before it is given its code and file name.
enum Fail {
    Malformed(String),
    Limit(String),
    Unsupported(String),
    Conflict(String),
    Io(io::Error),
}

impl Fail {
    fn into_error(self, deb: &str, state: &State) -> DebError {
        let (code, message) = match self {
            Fail::Malformed(m) => (Code::Malformed, m),
            Fail::Limit(m) => (Code::Limit, m),
            Fail::Unsupported(m) => (Code::Unsupported, m),
            Fail::Conflict(m) => (Code::Conflict, m),
            Fail::Io(e) => {
                if let Some(what) = state.over.get() {
                    (Code::Limit, format!("{what} is larger than allowed"))
                } else if state.io_failed.get() {
                    (Code::Read, format!("cannot read it: {e}"))
                } else {
                    (Code::Malformed, e.to_string())
                }
            }
        };
        DebError {
            code,
            deb: deb.to_string(),
            message,
        }
    }
}

impl From<io::Error> for Fail {
    fn from(e: io::Error) -> Self {
        Fail::Io(e)
    }
}

fn read_package<R: Read>(
    src: Source<R>,
    limits: &Limits,
    state: &Rc<State>,
) -> Result<PackageLayer, Fail> {
    let mut ar = Ar::new(src)?;
    let mut control: Option<(Control, Option<Vec<u8>>)> = None;
    let mut seen_binary = false;
    loop {
        let Some(name) = ar.next_member()? else {
            return Err(Fail::Malformed(if control.is_none() {
                "it has no control.tar member".into()
            } else {
                "it has no data.tar member".into()
            }));
        };
        if !seen_binary {
            if name != "debian-binary" {
                return Err(Fail::Malformed(format!(
                    "its first member is `{}`, not `debian-binary`",
                    escape(&name)
                )));
            }
            if ar.left > DEBIAN_BINARY_LIMIT {
                return Err(Fail::Malformed(format!(
                    "its `debian-binary` member holds {} bytes",
                    ar.left
                )));
            }
            let mut v = Vec::new();
            ar.member().read_to_end(&mut v)?;
            if !v.starts_with(b"2.") || !v.ends_with(b"\n") {
                return Err(Fail::Malformed(format!(
                    "its format version is `{}`, not 2.x",
                    escape(String::from_utf8_lossy(&v).trim_end())
                )));
            }
            seen_binary = true;
            continue;
        }
        if name.starts_with('_') {
            continue;
        }
        if let Some(ext) = name.strip_prefix("control.tar") {
            if control.is_some() {
                return Err(Fail::Malformed("it has two control.tar members".into()));
            }
            let z = decompressor(ext, ar.member(), &name)?;
            control = Some(read_control(
                Capped::new(z, CONTROL_TAR_LIMIT, "the control tar", state.clone()),
                &name,
            )?);
            ar.finish_member()?;
            continue;
        }
        if let Some(ext) = name.strip_prefix("data.tar") {
            let Some((control, md5sums)) = control.take() else {
                return Err(Fail::Malformed(
                    "its data.tar member comes before control.tar".into(),
                ));
            };
            let z = decompressor(ext, ar.member(), &name)?;
            let raw = read_data(
                Capped::new(z, limits.max_data_tar(), "the data tar", state.clone()),
                limits,
            )?;
            ar.finish_member()?;
            return build_layer(control, md5sums, raw, ext.to_string());
        }
        return Err(Fail::Malformed(format!(
            "it has an unexpected member `{}`",
            escape(&name)
        )));
    }
}

// ---------------------------------------------------------------------------
// ar

/// A streaming reader of the common `ar` format (as `dpkg-deb` writes it).
struct Ar<R> {
    r: R,
    pos: u64,
    /// Bytes of the current member not read yet, then its padding.
    left: u64,
    pad: u64,
}

impl<R: Read> Ar<R> {
    fn new(mut r: R) -> Result<Self, Fail> {
        let mut magic = [0u8; 8];
        if !fill(&mut r, &mut magic)? || &magic != b"!<arch>\n" {
            return Err(Fail::Malformed("it is not an ar archive".into()));
        }
        Ok(Ar {
            r,
            pos: 8,
            left: 0,
            pad: 0,
        })
    }

    /// The next member's name; `None` at the end of the archive.
    fn next_member(&mut self) -> Result<Option<String>, Fail> {
        self.finish_member()?;
        let mut h = [0u8; 60];
        let at = self.pos;
        if !fill(&mut self.r, &mut h)? {
            return Ok(None);
        }
        self.pos += 60;
        if &h[58..60] != b"`\n" {
            return Err(Fail::Malformed(format!(
                "bad ar member header at byte {at}"
            )));
        }
        let name = std::str::from_utf8(&h[..16])
            .map_err(|_| Fail::Malformed(format!("bad ar member name at byte {at}")))?
            .trim_end_matches(' ');
        let name = name.strip_suffix('/').unwrap_or(name).to_string();
        let size = std::str::from_utf8(&h[48..58])
            .ok()
            .map(|s| s.trim_end_matches(' '))
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| Fail::Malformed(format!("bad ar member size at byte {at}")))?;
        self.left = size;
        self.pad = size % 2;
        Ok(Some(name))
    }

    /// The current member's bytes; its end is the end of the stream, and the
    /// archive ending before it is an error.
    fn member(&mut self) -> ArMember<'_, R> {
        ArMember { ar: self }
    }

    /// Skips what is left of the current member and its padding.
    fn finish_member(&mut self) -> Result<(), Fail> {
        io::copy(&mut self.member(), &mut io::sink())?;
        if self.pad > 0 {
            let mut p = [0u8; 1];
            // The padding byte may be missing after the last member.
            let got = self.r.read(&mut p)?;
            self.pos += got as u64;
            self.pad = 0;
        }
        Ok(())
    }
}

struct ArMember<'a, R> {
    ar: &'a mut Ar<R>,
}

impl<R: Read> Read for ArMember<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.ar.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = self.ar.left.min(buf.len() as u64) as usize;
        let n = self.ar.r.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "it is truncated: it ends inside an ar member at byte {} ({} bytes missing)",
                    self.ar.pos, self.ar.left
                ),
            ));
        }
        self.ar.left -= n as u64;
        self.ar.pos += n as u64;
        Ok(n)
    }
}

/// Reads exactly `buf.len()` bytes; `Ok(false)` on a clean end before the
/// first byte.
fn fill(r: &mut impl Read, buf: &mut [u8]) -> Result<bool, Fail> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) if n == 0 => return Ok(false),
            Ok(0) => {
                return Err(Fail::Malformed(
                    "it is truncated: it ends inside an ar header".into(),
                ));
            }
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

/// The decompressed stream of a member named `control.tar<ext>` or
/// `data.tar<ext>`.
fn decompressor<'a, R: Read + 'a>(
    ext: &str,
    member: ArMember<'a, R>,
    name: &str,
) -> Result<Box<dyn Read + 'a>, Fail> {
    Ok(match ext {
        "" => Box::new(member),
        ".gz" => Box::new(flate2::read::MultiGzDecoder::new(member)),
        ".xz" => {
            let stream =
                xz2::stream::Stream::new_stream_decoder(XZ_MEMLIMIT, xz2::stream::CONCATENATED)
                    .map_err(|e| Fail::Io(io::Error::other(e)))?;
            Box::new(xz2::read::XzDecoder::new_stream(
                BufReader::new(member),
                stream,
            ))
        }
        ".zst" => Box::new(zstd::stream::read::Decoder::new(member)?),
        _ => {
            return Err(Fail::Unsupported(format!(
                "its member `{}` has a compression imgc does not read (gzip, xz, zstd or none)",
                escape(name)
            )));
        }
    })
}

/// A decompressed stream that may yield at most `cap` bytes: one more is an
/// error (and noted in the state, so the error becomes a [`Code::Limit`]).
struct Capped<R> {
    r: R,
    left: u64,
    what: &'static str,
    state: Rc<State>,
}

impl<R: Read> Capped<R> {
    fn new(r: R, cap: u64, what: &'static str, state: Rc<State>) -> Self {
        Capped {
            r,
            left: cap,
            what,
            state,
        }
    }

    /// Reads the stream to its end (checking the compressor's own checksums
    /// and the member's framing).
    fn drain(&mut self) -> io::Result<()> {
        io::copy(self, &mut io::sink()).map(|_| ())
    }
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let want = (self.left.saturating_add(1)).min(buf.len() as u64) as usize;
        let n = self.r.read(&mut buf[..want])?;
        if n as u64 > self.left {
            self.state.over.set(Some(self.what));
            return Err(io::Error::other(format!(
                "{} is larger than allowed",
                self.what
            )));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

// ---------------------------------------------------------------------------
// control.tar

fn read_control<R: Read>(
    mut r: Capped<R>,
    member: &str,
) -> Result<(Control, Option<Vec<u8>>), Fail> {
    let mut control = None;
    let mut md5sums = None;
    {
        let mut s = Scanner::new(&mut r);
        while let Some(m) = s.next_member()? {
            let path = entry_path(&m.path, usize::MAX)?;
            let (slot, limit) = match path.as_str() {
                "control" => (&mut control, CONTROL_LIMIT),
                "md5sums" => (&mut md5sums, MD5SUMS_LIMIT),
                _ => continue,
            };
            if !is_regular(&m) {
                return Err(Fail::Malformed(format!(
                    "`{path}` in {member} is not a regular file"
                )));
            }
            if slot.is_some() {
                return Err(Fail::Malformed(format!("{member} holds `{path}` twice")));
            }
            if m.size > limit {
                return Err(Fail::Limit(format!(
                    "`{path}` in {member} holds {} bytes, over the limit of {}",
                    m.size,
                    crate::input::human_size(limit)
                )));
            }
            let mut v = Vec::with_capacity(m.size as usize);
            s.data().read_to_end(&mut v)?;
            *slot = Some(v);
        }
    }
    r.drain()?;
    let control =
        control.ok_or_else(|| Fail::Malformed(format!("{member} has no `control` file")))?;
    Ok((parse_control(&control)?, md5sums))
}

/// Parses and checks the control paragraph; keeps its text as shipped.
fn parse_control(bytes: &[u8]) -> Result<Control, Fail> {
    use debian_packaging::control::ControlParagraphReader;
    let text = std::str::from_utf8(bytes)
        .map_err(|_| Fail::Malformed("its control file is not UTF-8".into()))?;
    let bad = |m: String| Fail::Malformed(format!("its control file {m}"));
    let mut paragraphs = ControlParagraphReader::new(io::Cursor::new(text.as_bytes()));
    let p = match paragraphs.next() {
        Some(Ok(p)) => p,
        Some(Err(e)) => return Err(bad(format!("does not parse: {e}"))),
        None => return Err(bad("is empty".into())),
    };
    if paragraphs.next().is_some() {
        return Err(bad("holds more than one paragraph".into()));
    }
    let field = |name: &str| -> Result<String, Fail> {
        match p.field_str(name) {
            Some(v) if !v.is_empty() && !v.contains('\n') => Ok(v.to_string()),
            Some(_) => Err(bad(format!("has a malformed `{name}` field"))),
            None => Err(bad(format!("has no `{name}` field"))),
        }
    };
    let package = field("Package")?;
    let version = field("Version")?;
    let architecture = field("Architecture")?;
    if !valid_package_name(&package) {
        return Err(bad(format!(
            "names the package `{}`, not a Debian package name",
            escape(&package)
        )));
    }
    debian_packaging::package_version::PackageVersion::parse(&version).map_err(|e| {
        bad(format!(
            "has a malformed version `{}`: {e}",
            escape(&version)
        ))
    })?;
    if p.has_field("Status") {
        return Err(bad(
            "has a `Status` field (that is dpkg's, not a package's)".into(),
        ));
    }
    if text.contains('\r') {
        return Err(bad("has carriage returns".into()));
    }
    let mut paragraph = String::new();
    for line in text.lines() {
        paragraph.push_str(line);
        paragraph.push('\n');
    }
    while paragraph.ends_with("\n\n") || paragraph.starts_with('\n') {
        if paragraph.starts_with('\n') {
            paragraph.remove(0);
        } else {
            paragraph.pop();
        }
    }
    Ok(Control {
        package,
        version,
        architecture,
        paragraph,
    })
}

/// Debian policy §5.6.1: lower-case letters, digits, `+`, `-`, `.`; at least
/// two characters, starting with a letter or digit.
fn valid_package_name(name: &str) -> bool {
    name.len() >= 2
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
}

// ---------------------------------------------------------------------------
// data.tar

/// One entry of the data tar, before merged-/usr rewriting.
struct Raw {
    path: String,
    data: RawData,
    mode: u32,
    uid: u32,
    gid: u32,
}

enum RawData {
    File(Vec<u8>),
    Dir,
    Symlink(String),
}

fn is_regular(m: &Member) -> bool {
    matches!(m.kind, tar::EntryType::Regular | tar::EntryType::Continuous)
        && !m.path.ends_with(b"/")
}

/// A tar entry's path, normalized: UTF-8, no `..`, no `.`, no empty component,
/// no whiteout name. The root is `""`.
fn entry_path(raw: &[u8], max: usize) -> Result<String, Fail> {
    if raw.len() > max {
        return Err(Fail::Limit(format!(
            "a path in data.tar is {} bytes long, over the limit of {max}",
            raw.len()
        )));
    }
    let s = std::str::from_utf8(raw).map_err(|_| {
        Fail::Malformed(format!(
            "the path `{}` is not UTF-8",
            escape(&String::from_utf8_lossy(raw))
        ))
    })?;
    let mut parts = Vec::new();
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                return Err(Fail::Malformed(format!(
                    "the path `{}` leaves the image root",
                    escape(s)
                )));
            }
            c if c.starts_with(".wh.") => {
                return Err(Fail::Unsupported(format!(
                    "the path `{}` has a whiteout name (`.wh.`): it would delete files of lower layers",
                    escape(s)
                )));
            }
            c => parts.push(c),
        }
    }
    Ok(parts.join("/"))
}

fn read_data<R: Read>(mut r: Capped<R>, limits: &Limits) -> Result<Vec<Raw>, Fail> {
    let mut out: Vec<Raw> = Vec::new();
    // Index in `out` of each regular file, by path: hard links name them.
    let mut files: BTreeMap<String, usize> = BTreeMap::new();
    let mut count = 0u64;
    let mut content = 0u64;
    {
        let mut s = Scanner::new(&mut r);
        while let Some(m) = s.next_member()? {
            count += 1;
            if count > limits.max_entries {
                return Err(Fail::Limit(format!(
                    "data.tar holds more than {} entries",
                    limits.max_entries
                )));
            }
            let path = entry_path(&m.path, limits.max_path)?;
            let shown = escape(&path).into_owned();
            let uid = u32::try_from(m.uid)
                .map_err(|_| Fail::Malformed(format!("`{shown}` has uid {}", m.uid)))?;
            let gid = u32::try_from(m.gid)
                .map_err(|_| Fail::Malformed(format!("`{shown}` has gid {}", m.gid)))?;
            let is_dir = m.kind == tar::EntryType::Directory
                || (m.kind == tar::EntryType::Regular && m.path.ends_with(b"/"));
            if path.is_empty() {
                if is_dir {
                    continue;
                }
                return Err(Fail::Malformed(
                    "data.tar has an entry with an empty path".into(),
                ));
            }
            let link_target = |what: &str| -> Result<String, Fail> {
                let l = m.link.as_deref().unwrap_or(b"");
                if l.is_empty() {
                    return Err(Fail::Malformed(format!("{what} `{shown}` has no target")));
                }
                if l.len() > limits.max_path {
                    return Err(Fail::Limit(format!(
                        "the target of `{shown}` is {} bytes long, over the limit of {}",
                        l.len(),
                        limits.max_path
                    )));
                }
                String::from_utf8(l.to_vec())
                    .map_err(|_| Fail::Malformed(format!("the target of `{shown}` is not UTF-8")))
            };
            let data = if is_dir {
                RawData::Dir
            } else if is_regular(&m) {
                if m.size > limits.max_content - content {
                    return Err(Fail::Limit(format!(
                        "its files hold more than {} (at `{shown}`)",
                        crate::input::human_size(limits.max_content)
                    )));
                }
                content += m.size;
                let mut v = Vec::with_capacity(m.size.min(16 << 20) as usize);
                s.data().read_to_end(&mut v)?;
                files.insert(path.clone(), out.len());
                RawData::File(v)
            } else if m.kind == tar::EntryType::Symlink {
                RawData::Symlink(link_target("the symlink")?)
            } else if m.kind == tar::EntryType::Link {
                let target = entry_path(link_target("the hard link")?.as_bytes(), limits.max_path)?;
                let Some(&i) = files.get(&target) else {
                    return Err(Fail::Malformed(format!(
                        "the hard link `{shown}` names `{}`, which is not an earlier regular file of data.tar",
                        escape(&target)
                    )));
                };
                let t = &out[i];
                let RawData::File(bytes) = &t.data else {
                    unreachable!("`files` indexes regular files only")
                };
                if bytes.len() as u64 > limits.max_content - content {
                    return Err(Fail::Limit(format!(
                        "its files hold more than {} (at `{shown}`)",
                        crate::input::human_size(limits.max_content)
                    )));
                }
                content += bytes.len() as u64;
                let raw = Raw {
                    path: path.clone(),
                    data: RawData::File(bytes.clone()),
                    mode: t.mode,
                    uid: t.uid,
                    gid: t.gid,
                };
                files.insert(path, out.len());
                out.push(raw);
                continue;
            } else {
                let what = match m.kind {
                    tar::EntryType::Char => "a character device",
                    tar::EntryType::Block => "a block device",
                    tar::EntryType::Fifo => "a FIFO",
                    tar::EntryType::GNUSparse => "a sparse file",
                    _ => "an entry of an unknown type",
                };
                return Err(Fail::Unsupported(format!(
                    "`{shown}` in data.tar is {what}: a package layer holds files, directories and symlinks only"
                )));
            };
            if !matches!(data, RawData::File(_)) {
                files.remove(&path);
            }
            out.push(Raw {
                path,
                data,
                mode: m.mode,
                uid,
                gid,
            });
        }
    }
    r.drain()?;
    Ok(out)
}

// ---------------------------------------------------------------------------
// the layer

fn build_layer(
    control: Control,
    md5sums: Option<Vec<u8>>,
    raw: Vec<Raw>,
    data_compression: String,
) -> Result<PackageLayer, Fail> {
    let mut aliased = BTreeSet::new();
    // Path → (moved from an aliased directory, entry, original path).
    let mut by_path: BTreeMap<String, (bool, Entry, String)> = BTreeMap::new();
    for r in raw {
        if let RawData::Symlink(t) = &r.data {
            // A package may ship the merged-/usr link itself (Debian 13's
            // base-files does): the base provides it.
            if ALIASED_DIRS.contains(&r.path.as_str()) {
                if t.trim_start_matches('/') == format!("usr/{}", r.path) {
                    continue;
                }
                return Err(Fail::Conflict(format!(
                    "data.tar holds `/{}` as a symlink to `{}`, not to `usr/{}` as on a merged-/usr system",
                    r.path,
                    escape(t),
                    r.path
                )));
            }
        }
        let moved = merged_path(&r.path);
        if moved.is_some() {
            aliased.insert(r.path.split('/').next().unwrap_or("").to_string());
        }
        let path = moved.clone().unwrap_or_else(|| r.path.clone());
        let data = match r.data {
            RawData::File(b) => EntryData::Bytes(b),
            RawData::Dir => EntryData::Dir,
            RawData::Symlink(t) if moved.is_some() => {
                EntryData::Symlink(moved_link_target(&r.path, &path, &t))
            }
            RawData::Symlink(t) => EntryData::Symlink(t),
        };
        let entry = Entry {
            path: path.clone(),
            data,
            mode: r.mode,
            uid: r.uid,
            gid: r.gid,
        };
        match by_path.get(&path) {
            None => {
                by_path.insert(path, (moved.is_some(), entry, r.path));
            }
            Some((prev_moved, prev, prev_orig)) => {
                if prev.data == EntryData::Dir && entry.data == EntryData::Dir {
                    // The same directory under both names: the /usr one wins.
                    if *prev_moved && moved.is_none() {
                        by_path.insert(path, (false, entry, r.path));
                    }
                    continue;
                }
                return Err(Fail::Conflict(if *prev_orig == r.path {
                    format!("data.tar holds `{}` twice", escape(&r.path))
                } else {
                    format!(
                        "data.tar holds both `/{}` and `/{}`, which are one path on a merged-/usr system",
                        escape(prev_orig),
                        escape(&r.path)
                    )
                }));
            }
        }
    }
    let mut entries: Vec<Entry> = by_path.into_values().map(|(_, e, _)| e).collect();
    entries.push(Entry {
        path: format!("{STATUS_DIR}/{}", control.package),
        data: EntryData::Bytes(status_paragraph(&control.paragraph).into_bytes()),
        mode: 0o644,
        uid: 0,
        gid: 0,
    });
    if let Some(sums) = md5sums {
        entries.push(Entry {
            path: format!("{STATUS_DIR}/{}.md5sums", control.package),
            data: EntryData::Bytes(merged_md5sums(&sums)?),
            mode: 0o644,
            uid: 0,
            gid: 0,
        });
    }
    let entries = layer::normalize(entries).map_err(|e| match e {
        LayerError::InvalidPath { .. } | LayerError::InvalidMode { .. } => {
            Fail::Malformed(e.to_string())
        }
        _ => Fail::Conflict(e.to_string()),
    })?;
    Ok(PackageLayer {
        control,
        entries,
        aliased,
        data_compression,
    })
}

/// The control paragraph with `Status: install ok installed` after the
/// `Package` field (and its continuation lines, if any).
fn status_paragraph(paragraph: &str) -> String {
    let mut out = String::with_capacity(paragraph.len() + 32);
    let mut in_package = false;
    let mut done = false;
    for line in paragraph.lines() {
        let continuation = line.starts_with([' ', '\t']);
        if in_package && !continuation && !done {
            out.push_str("Status: install ok installed\n");
            done = true;
        }
        in_package = !done
            && (in_package && continuation
                || line
                    .split_once(':')
                    .is_some_and(|(k, _)| k.eq_ignore_ascii_case("Package")));
        out.push_str(line);
        out.push('\n');
    }
    if !done {
        out.push_str("Status: install ok installed\n");
    }
    out
}

/// `md5sums` with each path rewritten for merged /usr. Lines are
/// `<32 hex digits>  <path>` (two spaces, as `md5sum` writes them).
fn merged_md5sums(sums: &[u8]) -> Result<Vec<u8>, Fail> {
    let text = std::str::from_utf8(sums)
        .map_err(|_| Fail::Malformed("its md5sums file is not UTF-8".into()))?;
    let mut out = String::with_capacity(text.len() + 64);
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let bad = || Fail::Malformed(format!("its md5sums file is malformed at line {}", i + 1));
        let (sum, path) = line.split_at_checked(32).ok_or_else(bad)?;
        let path = path.strip_prefix("  ").ok_or_else(bad)?;
        if !sum.bytes().all(|b| b.is_ascii_hexdigit()) || path.is_empty() {
            return Err(bad());
        }
        let path = path.trim_start_matches("./").trim_start_matches('/');
        out.push_str(sum);
        out.push_str("  ");
        out.push_str(&merged_path(path).unwrap_or_else(|| path.to_string()));
        out.push('\n');
    }
    Ok(out.into_bytes())
}

/// The target of a symlink moved from `orig` to `new` (merged /usr): the
/// target as written when it still leads to the same place (merged) from the
/// new location, else a relative path that does. Absolute targets are kept.
fn moved_link_target(orig: &str, new: &str, target: &str) -> String {
    if target.starts_with('/') {
        return target.to_string();
    }
    let parent = |p: &str| -> Vec<String> {
        let mut v: Vec<String> = p.split('/').map(str::to_string).collect();
        v.pop();
        v
    };
    let merged = |v: Vec<String>| -> Vec<String> {
        let joined = v.join("/");
        match merged_path(&joined) {
            Some(m) if !v.is_empty() => m.split('/').map(str::to_string).collect(),
            _ => v,
        }
    };
    let want = merged(resolve(parent(orig), target));
    let new_parent = parent(new);
    if merged(resolve(new_parent.clone(), target)) == want {
        return target.to_string();
    }
    let common = new_parent
        .iter()
        .zip(&want)
        .take_while(|(a, b)| a == b)
        .count();
    let mut parts: Vec<&str> = vec![".."; new_parent.len() - common];
    parts.extend(want[common..].iter().map(String::as_str));
    if parts.is_empty() {
        ".".to_string()
    } else {
        parts.join("/")
    }
}

/// `target` resolved lexically from the directory `dir` (components from
/// `/`); `..` at the root stays at the root, as the kernel does.
fn resolve(mut dir: Vec<String>, target: &str) -> Vec<String> {
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                dir.pop();
            }
            c => dir.push(c.to_string()),
        }
    }
    dir
}

#[cfg(test)]
mod tests;
