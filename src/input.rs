//! Reading untrusted input files: open them confined, read within bounds, hash what is read.
//!
//! Every byte imgc takes from a workspace may come from a hostile checkout, and
//! every byte that shapes an output must be the byte its key hashed. This module
//! is the one place that opens such a file and reads it.
//!
//! # Confinement: every open is relative to the workspace root's descriptor
//!
//! A workspace file is never opened by its absolute path. [`Root`] holds a
//! directory descriptor of the canonical workspace root, and every workspace
//! file or directory is opened *relative to it*, so no read can leave the
//! workspace, not even under a race: checking a path for symlinks and then
//! opening it by name (what imgc did before) let a parent directory swapped
//! for a link between the check and the open hand over a file outside.
//!
//! - **The fast path** is one `openat2` with `RESOLVE_BENEATH |
//!   RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS`: the kernel resolves the
//!   whole path beneath the root, atomically, and fails if any component is a
//!   symlink. This is the common case (no links on the way) in one system call.
//! - **The walk** ([`Root::locate`] falls back to it when `openat2` meets a
//!   link, is missing (`ENOSYS`: kernels before 5.6, some seccomp filters) or
//!   fails in any other way than "not found") resolves the path one component
//!   at a time, each opened with `openat(O_NOFOLLOW | O_DIRECTORY)` relative to
//!   the descriptor of the one before. A symlink met on the way is read
//!   (`readlinkat`) and followed *by hand*: its target's components replace
//!   it, `..` pops the walk's own stack of descriptors (never the kernel's
//!   `..`), and an absolute target is followed only if it names a path inside
//!   the root. A link that leaves the workspace, even one whose chain comes back
//!   in (`../ws/a`), is an error of kind [`io::ErrorKind::PermissionDenied`]
//!   carrying [`InputError::Escapes`]; more than 40 links is
//!   [`InputError::TooManyLinks`]. The walk always knows the path it resolved
//!   ([`Located::resolved`]).
//!
//! Both give the same answers (the unit tests run every case through both):
//! links inside the workspace are followed where imgc follows them today, links
//! leaving it are refused. Which links are followed is the caller's choice:
//! [`Root::locate`] with `follow_last = false` follows the parents only (a
//! `copy` source that is a symlink is copied as one), with `true` the last
//! component too (imports, glob bases). Below a directory opened this way,
//! [`Dir`] opens, stats and lists entries relative to *its* descriptor and never
//! follows a link ([`Dir::open_dir`] and [`Dir::open_regular`] use
//! `O_NOFOLLOW`), so walking a copied directory or a glob cannot leave it
//! whatever is renamed meanwhile.
//!
//! # Only regular files, bounded reads
//!
//! - [`Dir::open_regular`] (and [`open_regular`] for files that are not in a
//!   workspace, like CAS blobs) opens a **regular file only**: it `lstat`s
//!   first, so a FIFO, socket or device is refused without ever being opened
//!   (opening a device can have side effects; opening a FIFO blocks until a
//!   writer comes), then opens with `O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC` and
//!   checks the descriptor's `fstat` again, so an entry swapped for a link or a
//!   FIFO between the two calls is refused too, never followed and never
//!   waited on.
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
//! the workspace, once per action:   let root = Root::open(canonical_root)?;
//! a file, links followed inside:    root.open_regular(rel)?                   (imports)
//! a file, parents followed only:    root.open_nofollow(rel)?                  (layer sources)
//! a directory to list:              root.dir(rel)?.names()?, then Dir::lstat / open_dir / open_regular
//! hash a file (the key side):       hash_opened(opened, Limit::Exactly(size), Algos::Blake3) -> Hashes
//! stream a file of known size:      let mut r = HashReader::new(o.file, Limit::Exactly(o.meta.len())).blake3();
//!                                   io::copy(&mut r, &mut sink)?; let h = r.finish()?;
//! read a capped document:           HashReader::new(o.file, Limit::AtMost(CAP)).blake3().sha256()
//!                                   + read_all
//! verify a file outside a workspace: hash_file(path, Algos::Sha256)
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
//! - No defence against the workspace's own directories being moved while a
//!   walk holds them: a directory renamed out of the workspace after it was
//!   opened is still read through its descriptor. Everything below it is the
//!   workspace's own content, moved; nothing that was outside becomes reachable.
//! - No retries on a changed file: a file that changes while it is read is an
//!   error; the build fails rather than store what its key does not describe.
//! - The root itself is opened by its path: the directories above the workspace
//!   are the user's, not the checkout's.

use crate::cache::StatKey;
use crate::hash::{Digest, Key, Sha256};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

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
/// at its last component and never blocking (see the module docs). For files
/// outside a workspace (the CAS): a workspace file is opened through [`Root`].
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
    opened(file)
}

/// An open file with its `fstat`, if that says it is a regular file.
fn opened(file: File) -> io::Result<Opened> {
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(InputError::NotRegular(kind_name(meta.file_type())).into_io());
    }
    Ok(Opened { file, meta })
}

/// Pushes the components of a relative path onto a stack (last first), `.` dropped.
fn push_components(stack: &mut Vec<OsString>, p: &Path) -> io::Result<()> {
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

/// Whether `openat2` is worth trying: cleared for good (for this process) the
/// first time it answers `ENOSYS` or `EPERM` (kernels before 5.6, seccomp
/// filters that refuse system calls they do not know).
static OPENAT2: AtomicBool = AtomicBool::new(true);

/// How every directory is opened: for reading (listing), never following a
/// link at the last component, and never anything but a directory (so a
/// device or FIFO is refused before it is opened).
const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// The workspace root, opened: every workspace file is opened beneath it (see
/// the module docs). Two roots are equal if they name the same path.
#[derive(Debug)]
pub struct Root {
    dir: Dir,
    path: PathBuf,
    /// Try `openat2` first; `false` makes every lookup walk by hand (as on a
    /// kernel without `openat2`), for tests.
    fast: bool,
}

impl PartialEq for Root {
    fn eq(&self, other: &Root) -> bool {
        self.path == other.path
    }
}

impl Eq for Root {}

/// Where a workspace path led: the entry `name` of the directory `dir`, or
/// `dir` itself if `name` is `None` (the path resolved to a directory it
/// walked into: the root for an empty path, or `a` for `a/b/..`).
#[derive(Debug)]
pub struct Located {
    pub dir: Dir,
    pub name: Option<OsString>,
    /// The workspace-relative path it resolved to, without links or `..`.
    pub resolved: PathBuf,
}

impl Root {
    /// Opens the workspace root at `canonical` (a path with no symlink in it,
    /// as `canonicalize` returns).
    pub fn open(canonical: &Path) -> io::Result<Root> {
        let fd = rustix::fs::open(canonical, DIR_FLAGS, Mode::empty())?;
        Ok(Root {
            dir: Dir { fd },
            path: canonical.to_path_buf(),
            fast: true,
        })
    }

    /// [`Root::open`], but every lookup walks the path by hand, as on a kernel
    /// without `openat2`. For tests of the fallback.
    #[doc(hidden)]
    pub fn open_walking(canonical: &Path) -> io::Result<Root> {
        Ok(Root {
            fast: false,
            ..Root::open(canonical)?
        })
    }

    /// The canonical path of the root.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Finds `rel` (relative to the root): its parent directories are followed
    /// through symlinks that stay inside the workspace, and so is `rel` itself
    /// if `follow_last`. The entry itself is not checked: a missing last
    /// component is found missing by whoever opens or stats it.
    pub fn locate(&self, rel: &Path, follow_last: bool) -> io::Result<Located> {
        if let Some((parent, name)) = self.fast_split(rel) {
            match self.beneath(parent) {
                Ok(fd) => {
                    let dir = Dir { fd };
                    let name = name.to_os_string();
                    // A last component that is a link is left to the walk,
                    // which knows where links may lead.
                    if !(follow_last && dir.lstat(&name).is_ok_and(|s| s.is_symlink())) {
                        return Ok(Located {
                            dir,
                            name: Some(name),
                            resolved: rel.to_path_buf(),
                        });
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(e),
                Err(_) => {}
            }
        }
        self.walk(rel, follow_last)
    }

    /// Opens the directory `rel`, following symlinks (its own too) only inside
    /// the workspace.
    pub fn dir(&self, rel: &Path) -> io::Result<Dir> {
        if self.fast_split(rel).is_some() {
            match self.beneath(rel) {
                Ok(fd) => return Ok(Dir { fd }),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(e),
                Err(_) => {}
            }
        }
        let l = self.walk(rel, true)?;
        match &l.name {
            None => Ok(l.dir),
            Some(name) => l.dir.open_dir(name),
        }
    }

    /// Opens `rel` if it is a regular file, following symlinks (its own too)
    /// only inside the workspace.
    pub fn open_regular(&self, rel: &Path) -> io::Result<Opened> {
        self.locate(rel, true)?.open_regular()
    }

    /// Opens `rel` if it is a regular file and not a symlink, following
    /// symlinks in its parent directories only inside the workspace.
    pub fn open_nofollow(&self, rel: &Path) -> io::Result<Opened> {
        self.locate(rel, false)?.open_regular()
    }

    /// `rel` split into its parent and last component, if the fast path may
    /// take it: `openat2` is there, and `rel` is made of plain names only (so
    /// that, with no link on the way, the path it resolves to is `rel`).
    fn fast_split<'p>(&self, rel: &'p Path) -> Option<(&'p Path, &'p OsStr)> {
        if !self.fast || !OPENAT2.load(Ordering::Relaxed) {
            return None;
        }
        if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            return None;
        }
        Some((rel.parent()?, rel.file_name()?))
    }

    /// The directory `rel` (plain names only) opened by one `openat2` beneath
    /// the root, refusing any symlink on the way.
    fn beneath(&self, rel: &Path) -> io::Result<OwnedFd> {
        let rel = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        let r = rustix::fs::openat2(
            &self.dir.fd,
            rel,
            DIR_FLAGS,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_SYMLINKS,
        );
        match r {
            Ok(fd) => Ok(fd),
            Err(e) => {
                if e == rustix::io::Errno::NOSYS || e == rustix::io::Errno::PERM {
                    OPENAT2.store(false, Ordering::Relaxed);
                }
                Err(e.into())
            }
        }
    }

    /// Resolves `rel` one component at a time (see the module docs).
    fn walk(&self, rel: &Path, follow_last: bool) -> io::Result<Located> {
        let mut todo: Vec<OsString> = Vec::new();
        push_components(&mut todo, rel)?;
        // The directories walked into below the root, each with its name:
        // together, the path resolved so far.
        let mut dirs: Vec<(Dir, OsString)> = Vec::new();
        let mut links = 0usize;
        // `todo` is a stack: the next component is at the end.
        while let Some(c) = todo.pop() {
            if c == ".." {
                if dirs.pop().is_none() {
                    return Err(InputError::Escapes.into_io());
                }
                continue;
            }
            let cur = dirs.last().map_or(&self.dir, |(d, _)| d);
            if todo.is_empty() {
                if !follow_last || !cur.lstat(&c)?.is_symlink() {
                    return self.located(dirs, Some(c));
                }
            } else {
                match cur.open_dir(&c) {
                    Ok(d) => {
                        dirs.push((d, c));
                        continue;
                    }
                    // A link (`ELOOP`, or `ENOTDIR` from `O_DIRECTORY`) is
                    // followed below; anything else is the error.
                    Err(e) => {
                        if !cur.lstat(&c).is_ok_and(|s| s.is_symlink()) {
                            return Err(e);
                        }
                    }
                }
            }
            links += 1;
            if links > MAX_LINKS {
                return Err(InputError::TooManyLinks.into_io());
            }
            let target = cur.read_link(&c)?;
            if target.is_absolute() {
                // Only a target inside the root keeps every step inside.
                let inner = target
                    .strip_prefix(&self.path)
                    .map_err(|_| InputError::Escapes.into_io())?;
                dirs.clear();
                push_components(&mut todo, inner)?;
            } else {
                push_components(&mut todo, &target)?;
            }
        }
        self.located(dirs, None)
    }

    fn located(
        &self,
        mut dirs: Vec<(Dir, OsString)>,
        name: Option<OsString>,
    ) -> io::Result<Located> {
        let mut resolved: PathBuf = dirs.iter().map(|(_, n)| n.as_os_str()).collect();
        if let Some(n) = &name {
            resolved.push(n);
        }
        let dir = match dirs.pop() {
            Some((d, _)) => d,
            None => self.dir.try_clone()?,
        };
        Ok(Located {
            dir,
            name,
            resolved,
        })
    }
}

impl Located {
    /// Opens what was located if it is a regular file (see [`Dir::open_regular`]).
    pub fn open_regular(&self) -> io::Result<Opened> {
        match &self.name {
            Some(name) => self.dir.open_regular(name),
            None => Err(InputError::NotRegular("a directory").into_io()),
        }
    }

    /// `lstat` of what was located.
    pub fn lstat(&self) -> io::Result<Stat> {
        match &self.name {
            Some(name) => self.dir.lstat(name),
            None => self.dir.stat_self(),
        }
    }
}

/// An open directory of the workspace. Everything below it is reached through
/// its descriptor, never by path, and no symlink is ever followed.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
}

/// A name handed to a [`Dir`] must be one plain component.
fn check_name(name: &OsStr) -> io::Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.as_bytes().contains(&b'/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("`{}` is not a file name", name.as_bytes().escape_ascii()),
        ));
    }
    Ok(())
}

impl Dir {
    fn try_clone(&self) -> io::Result<Dir> {
        Ok(Dir {
            fd: self.fd.try_clone()?,
        })
    }

    /// `lstat` of the entry `name`.
    pub fn lstat(&self, name: &OsStr) -> io::Result<Stat> {
        check_name(name)?;
        Ok(Stat::of(&rustix::fs::statat(
            &self.fd,
            name,
            AtFlags::SYMLINK_NOFOLLOW,
        )?))
    }

    /// `stat` of the directory itself.
    pub fn stat_self(&self) -> io::Result<Stat> {
        Ok(Stat::of(&rustix::fs::fstat(&self.fd)?))
    }

    /// The target of the symlink `name`, as written.
    pub fn read_link(&self, name: &OsStr) -> io::Result<PathBuf> {
        check_name(name)?;
        let target = rustix::fs::readlinkat(&self.fd, name, Vec::new())?;
        Ok(PathBuf::from(OsString::from_vec(target.into_bytes())))
    }

    /// Opens the subdirectory `name`; a symlink is refused, never followed.
    pub fn open_dir(&self, name: &OsStr) -> io::Result<Dir> {
        check_name(name)?;
        Ok(Dir {
            fd: open_dir_at(self.fd.as_fd(), name)?,
        })
    }

    /// Opens the entry `name` if it is a regular file: `lstat` first, so
    /// anything else is refused without being opened, then `O_NOFOLLOW |
    /// O_NONBLOCK` and `fstat` again (see the module docs).
    pub fn open_regular(&self, name: &OsStr) -> io::Result<Opened> {
        let st = self.lstat(name)?;
        if st.is_symlink() {
            return Err(InputError::Symlink.into_io());
        }
        if !st.is_file() {
            return Err(InputError::NotRegular(st.kind_name()).into_io());
        }
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(&self.fd, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::LOOP) => return Err(InputError::Symlink.into_io()),
            Err(e) => return Err(e.into()),
        };
        opened(File::from(fd))
    }

    /// Replaces the regular file `name` (never a symlink: it is refused, like
    /// anything but a regular file) with `bytes` if it still holds `expected`,
    /// keeping its permission bits. The new content goes to a temporary file
    /// beside it (created, never followed, with `O_EXCL | O_NOFOLLOW`), is
    /// synced, and is renamed over the old one, so a reader sees the old file
    /// or the new one, never a mix; on failure the temporary file is removed
    /// and the file is untouched. Used by `imgc pin`, the one command that
    /// edits a spec.
    pub fn replace_regular(&self, name: &OsStr, expected: &[u8], bytes: &[u8]) -> io::Result<()> {
        let current = self.open_regular(name)?;
        let mode = current.meta.permissions().mode() & 0o7777;
        let (old, _) = read_all(
            HashReader::new(current.file, Limit::AtMost(expected.len() as u64 + 1)),
            current.meta.len(),
        )
        .map_err(|e| match input_error(&e) {
            Some(InputError::TooLong { .. }) => changed_meanwhile(),
            _ => e,
        })?;
        if old != expected {
            return Err(changed_meanwhile());
        }
        let tmp = self.synced_temp(name, bytes, mode)?;
        let result = rustix::fs::renameat(&self.fd, &tmp, &self.fd, name);
        if result.is_err() {
            let _ = rustix::fs::unlinkat(&self.fd, &tmp, AtFlags::empty());
        }
        Ok(result?)
    }

    /// Creates the regular file `name` holding `bytes` (mode `mode`), only if
    /// nothing of that name exists (else [`io::ErrorKind::AlreadyExists`]): the
    /// bytes go to a temporary file beside it (`O_EXCL | O_NOFOLLOW`), are
    /// synced, and are hard-linked under `name` (which never replaces anything),
    /// then the temporary name is removed. A reader sees no file or the whole one.
    pub fn create_regular(&self, name: &OsStr, bytes: &[u8], mode: u32) -> io::Result<()> {
        let tmp = self.synced_temp(name, bytes, mode)?;
        let result = rustix::fs::linkat(&self.fd, &tmp, &self.fd, name, AtFlags::empty());
        let _ = rustix::fs::unlinkat(&self.fd, &tmp, AtFlags::empty());
        Ok(result?)
    }

    /// A new temporary file beside `name` (`.NAME.imgc-tmp-PID-N`, created with
    /// `O_EXCL | O_NOFOLLOW`, so never anything that was there) holding `bytes`
    /// with permission bits `mode` (set after creation: the umask must not narrow
    /// them), synced. Its name, for the caller to publish; removed on failure.
    fn synced_temp(&self, name: &OsStr, bytes: &[u8], mode: u32) -> io::Result<OsString> {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let mut tmp = OsString::from(".");
        tmp.push(name);
        tmp.push(format!(
            ".imgc-tmp-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&self.fd, &tmp, flags, Mode::from_raw_mode(0o600))?;
        let write = || -> io::Result<()> {
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode & 0o7777))?;
            let mut f = File::from(fd.try_clone()?);
            f.write_all(bytes)?;
            f.sync_all()
        };
        match write() {
            Ok(()) => Ok(tmp),
            Err(e) => {
                let _ = rustix::fs::unlinkat(&self.fd, &tmp, AtFlags::empty());
                Err(e)
            }
        }
    }

    /// The names of the directory's entries (without `.` and `..`), sorted
    /// bytewise.
    pub fn names(&self) -> io::Result<Vec<OsString>> {
        Ok(names_at(self.fd.as_fd())?)
    }
}

/// The bytes of the file `rel` of the workspace at `root`, or `None` when there
/// is none: opened beneath the root as spec files are (a link is followed only
/// inside the workspace, only a regular file is read), at most `max` bytes (a
/// larger file is an error).
pub fn read_beneath(root: &Path, rel: &str, max: u64) -> io::Result<Option<Vec<u8>>> {
    let ws = Root::open(&std::fs::canonicalize(root)?)?;
    let opened = match ws.open_regular(Path::new(rel)) {
        Ok(o) => o,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let too_large = || io::Error::other(format!("larger than the {} it may have", human_size(max)));
    let size = opened.meta.len();
    if size > max {
        return Err(too_large());
    }
    let reader = HashReader::new(opened.file, Limit::AtMost(max));
    let (bytes, _) = read_all(reader, size).map_err(|e| match input_error(&e) {
        Some(_) => too_large(),
        None => e,
    })?;
    Ok(Some(bytes))
}

fn changed_meanwhile() -> io::Error {
    io::Error::other("it changed while imgc was reading it; run the command again")
}

/// Opens the subdirectory `name` of `dir` as every directory here is opened
/// ([`DIR_FLAGS`]: never following a link, never anything but a directory).
/// Shared with [`crate::output`], which walks its output directory the same way.
pub(crate) fn open_dir_at(dir: BorrowedFd<'_>, name: &OsStr) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(dir, name, DIR_FLAGS, Mode::empty())
}

/// The names of the entries of `dir` (without `.` and `..`), sorted bytewise.
/// Shared with [`crate::output`].
pub(crate) fn names_at(dir: BorrowedFd<'_>) -> rustix::io::Result<Vec<OsString>> {
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let name = entry?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(OsString::from_vec(name));
        }
    }
    names.sort();
    Ok(names)
}

/// What `lstat` (or `fstat`) says of a workspace entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    file_type: FileType,
    /// The stat data the file-hash memo compares.
    pub key: StatKey,
}

impl Stat {
    /// Field types differ between architectures (hence the casts).
    #[allow(clippy::unnecessary_cast)]
    fn of(s: &rustix::fs::Stat) -> Stat {
        let ns = |sec: i64, nsec: i64| sec.saturating_mul(1_000_000_000).saturating_add(nsec);
        Stat {
            file_type: FileType::from_raw_mode(s.st_mode as _),
            key: StatKey {
                size: s.st_size as u64,
                mtime_ns: ns(s.st_mtime as i64, s.st_mtime_nsec as i64),
                ctime_ns: ns(s.st_ctime as i64, s.st_ctime_nsec as i64),
                inode: s.st_ino as u64,
                mode: s.st_mode as u32,
            },
        }
    }

    pub fn is_file(&self) -> bool {
        self.file_type == FileType::RegularFile
    }

    pub fn is_dir(&self) -> bool {
        self.file_type == FileType::Directory
    }

    pub fn is_symlink(&self) -> bool {
        self.file_type == FileType::Symlink
    }

    pub fn len(&self) -> u64 {
        self.key.size
    }

    pub fn is_empty(&self) -> bool {
        self.key.size == 0
    }

    /// `st_mode`, permission and file type bits.
    pub fn mode(&self) -> u32 {
        self.key.mode
    }

    pub fn ino(&self) -> u64 {
        self.key.inode
    }

    /// "a FIFO", "a directory", ...: for messages.
    pub fn kind_name(&self) -> &'static str {
        match self.file_type {
            FileType::RegularFile => "a regular file",
            FileType::Directory => "a directory",
            FileType::Symlink => "a symbolic link",
            FileType::Fifo => "a FIFO",
            FileType::Socket => "a socket",
            FileType::CharacterDevice => "a character device",
            FileType::BlockDevice => "a block device",
            FileType::Unknown => "a special file",
        }
    }
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
    /// The input has been seen to end (a read returned 0).
    ended: bool,
}

/// The size of the reads of every input imgc streams: large enough that
/// system calls and hashing per call cost nothing next to the data.
pub const READ_BUF: usize = 256 * 1024;

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
            ended: false,
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
        if !self.ended {
            // Whatever is left, in reads of at most `READ_BUF` (one byte if
            // the input should be at its end: the probe for one more).
            let left = self.limit.max().saturating_sub(self.n);
            let mut buf = vec![0u8; left.saturating_add(1).min(READ_BUF as u64) as usize];
            loop {
                match self.read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
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
                0 => {
                    self.ended = true;
                    Ok(0)
                }
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
            self.ended = true;
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

/// Hashes everything `r` holds, which must fit `limit` (for a file of known
/// size, `Limit::Exactly` of the size the caller saw: a file that changed
/// size since is an error), reading [`READ_BUF`] bytes at a time.
pub fn hash_all<R: Read>(r: R, limit: Limit, hash: Algos) -> io::Result<Hashes> {
    HashReader::with(r, limit, hash).finish()
}

/// Hashes a whole regular file outside a workspace (opened with
/// [`open_regular`]); its size must not change while it is read. Returns the
/// hashes and the `fstat` taken before reading.
pub fn hash_file(path: &Path, hash: Algos) -> io::Result<(Hashes, Metadata)> {
    let o = open_regular(path)?;
    let h = hash_all(o.file, Limit::Exactly(o.meta.len()), hash)?;
    Ok((h, o.meta))
}

/// Reads a whole input into memory through a [`HashReader`] (for capped documents).
/// `expected` is the size the caller saw (a file's `fstat`): the buffer is reserved
/// for that many bytes (within the limit) and grows only if the input is longer.
/// Reserving the cap instead cost every spec file read 1 MiB of address space, all
/// of them at once while a workspace loads.
pub fn read_all<R: Read>(mut r: HashReader<R>, expected: u64) -> io::Result<(Vec<u8>, Hashes)> {
    let mut bytes = Vec::with_capacity(expected.min(r.limit.max()).min(isize::MAX as u64) as usize);
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
    fn replace_regular_keeps_the_mode_and_refuses_changes_and_links() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(&dir.path().canonicalize().unwrap()).unwrap();
        let path = dir.path().join("BUILD.kdl");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let d = root.dir(Path::new("")).unwrap();
        let name = OsStr::new("BUILD.kdl");
        d.replace_regular(name, b"old", b"new text").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new text");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o640);
        // Not what was read: left alone (a longer and a shorter file alike).
        for stale in [&b"old"[..], b"new tex", b"new text and more"] {
            let e = d.replace_regular(name, stale, b"x").unwrap_err();
            assert!(e.to_string().contains("changed"), "{e}");
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new text");
        // A link is refused, and so is anything but a regular file.
        symlink("BUILD.kdl", dir.path().join("link.kdl")).unwrap();
        let e = d
            .replace_regular(OsStr::new("link.kdl"), b"new text", b"x")
            .unwrap_err();
        assert_eq!(err_of(&e), InputError::Symlink);
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        assert!(d.replace_regular(OsStr::new("sub"), b"", b"x").is_err());
        // No temporary file is left behind.
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["BUILD.kdl", "link.kdl", "sub"]);
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
        let e = read_all(HashReader::new(io::repeat(7), Limit::AtMost(10)), 10).unwrap_err();
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
        let (bytes, h) = read_all(HashReader::new(&b"abc"[..], Limit::AtMost(5)), 1).unwrap();
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

    /// Both ways of resolving: `openat2` first, and the walk by hand alone (as
    /// on a kernel without `openat2`). Every case must give the same answer.
    fn roots(path: &Path) -> [Root; 2] {
        [Root::open(path).unwrap(), Root::open_walking(path).unwrap()]
    }

    fn read(o: Opened) -> Vec<u8> {
        let mut v = Vec::new();
        let mut f = o.file;
        f.read_to_end(&mut v).unwrap();
        v
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
        symlink(&outer, root.join("outer")).unwrap();
        for ws in roots(&root) {
            let fast = ws.fast;
            for ok in [
                "a/b/f",
                "rel/f",
                "abs/b/f",
                "a/b/up",
                "abs-in/b/f",
                "a/../a/b/f",
            ] {
                let l = ws.locate(Path::new(ok), true).unwrap();
                assert_eq!(l.resolved, Path::new("a/b/f"), "{ok} {fast}");
                assert_eq!(read(l.open_regular().unwrap()), b"x", "{ok} {fast}");
                assert_eq!(read(ws.open_regular(Path::new(ok)).unwrap()), b"x");
            }
            for bad in [
                "out",
                "out-and-in",
                "zero",
                "..",
                "a/../../secret",
                "/etc/passwd",
                "outer/secret",
                "outer/ws/a/b/f",
            ] {
                let e = ws.open_regular(Path::new(bad)).unwrap_err();
                assert_eq!(err_of(&e), InputError::Escapes, "{bad} {fast}");
                assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
            }
            assert_eq!(
                err_of(&ws.open_regular(Path::new("loop")).unwrap_err()),
                InputError::TooManyLinks
            );
            assert_eq!(
                ws.open_regular(Path::new("a/nope")).unwrap_err().kind(),
                io::ErrorKind::NotFound
            );
            // Parents only: the last link is not followed.
            assert_eq!(
                err_of(&ws.open_nofollow(Path::new("a/b/up")).unwrap_err()),
                InputError::Symlink
            );
            assert_eq!(read(ws.open_nofollow(Path::new("rel/f")).unwrap()), b"x");
            assert_eq!(
                err_of(&ws.open_nofollow(Path::new("outer/secret")).unwrap_err()),
                InputError::Escapes
            );
            let l = ws.locate(Path::new("out"), false).unwrap();
            assert!(l.lstat().unwrap().is_symlink());
            assert_eq!(
                l.dir.read_link(OsStr::new("out")).unwrap(),
                Path::new("../secret")
            );
            // Directories, their own links followed inside only.
            assert_eq!(
                ws.dir(Path::new("rel")).unwrap().names().unwrap(),
                ["f", "up"]
            );
            assert_eq!(
                ws.dir(Path::new("abs/b")).unwrap().names().unwrap(),
                ["f", "up"]
            );
            assert_eq!(
                err_of(&ws.dir(Path::new("outer")).unwrap_err()),
                InputError::Escapes
            );
            let top = ws.dir(Path::new("")).unwrap().names().unwrap();
            assert_eq!(top[0], "a");
            assert_eq!(top.len(), 9);
            assert!(ws.locate(Path::new(""), true).unwrap().name.is_none());
            assert_eq!(
                ws.dir(Path::new("a/b/f")).unwrap_err().kind(),
                io::ErrorKind::NotADirectory
            );
        }
    }

    /// The race the descriptors close: a parent directory swapped for a link
    /// to a directory outside the workspace after it was looked at. Opening
    /// beneath the root refuses it (whichever way it resolves), and a
    /// directory already open keeps reading the directory that was there.
    #[test]
    fn a_parent_swapped_for_a_link_out_of_the_workspace_is_never_read() {
        let outer = tempfile::tempdir().unwrap();
        let outer = outer.path().canonicalize().unwrap();
        let root = outer.join("ws");
        let outside = outer.join("outside");
        std::fs::create_dir_all(root.join("pkg/sub")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(root.join("pkg/sub/f"), b"inside").unwrap();
        std::fs::write(outside.join("f"), b"SECRET").unwrap();
        for target in [outside.clone(), PathBuf::from("../../outside")] {
            for ws in roots(&root) {
                let held = ws.dir(Path::new("pkg/sub")).unwrap();
                let found = ws.locate(Path::new("pkg/sub/f"), false).unwrap();
                // The swap.
                std::fs::rename(root.join("pkg/sub"), root.join("pkg/old")).unwrap();
                symlink(&target, root.join("pkg/sub")).unwrap();
                for rel in ["pkg/sub/f", "pkg/sub/../sub/f"] {
                    for e in [
                        ws.open_nofollow(Path::new(rel)).unwrap_err(),
                        ws.open_regular(Path::new(rel)).unwrap_err(),
                    ] {
                        assert_eq!(err_of(&e), InputError::Escapes, "{rel} {}", ws.fast);
                    }
                }
                assert_eq!(
                    err_of(&ws.dir(Path::new("pkg/sub")).unwrap_err()),
                    InputError::Escapes
                );
                // What was opened before the swap is still the inside.
                assert_eq!(held.names().unwrap(), ["f"]);
                assert_eq!(read(held.open_regular(OsStr::new("f")).unwrap()), b"inside");
                assert_eq!(read(found.open_regular().unwrap()), b"inside");
                std::fs::remove_file(root.join("pkg/sub")).unwrap();
                std::fs::rename(root.join("pkg/old"), root.join("pkg/sub")).unwrap();
            }
        }
    }

    /// Below an open directory nothing is followed and nothing but a regular
    /// file is opened.
    #[test]
    fn a_dir_follows_no_link_and_opens_only_regular_files() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().canonicalize().unwrap();
        std::fs::create_dir(path.join("d")).unwrap();
        std::fs::write(path.join("d/f"), b"x").unwrap();
        symlink("d", path.join("to-d")).unwrap();
        symlink("d/f", path.join("to-f")).unwrap();
        let c = std::ffi::CString::new(path.join("fifo").as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        symlink("fifo", path.join("to-fifo")).unwrap();
        for ws in roots(&path) {
            let top = ws.dir(Path::new("")).unwrap();
            let name = OsStr::new;
            assert!(top.lstat(name("to-d")).unwrap().is_symlink());
            assert!(top.open_dir(name("to-d")).is_err());
            assert_eq!(
                err_of(&top.open_regular(name("to-f")).unwrap_err()),
                InputError::Symlink
            );
            assert_eq!(
                err_of(&top.open_regular(name("fifo")).unwrap_err()),
                InputError::NotRegular("a FIFO")
            );
            assert_eq!(
                err_of(&ws.open_regular(Path::new("to-fifo")).unwrap_err()),
                InputError::NotRegular("a FIFO")
            );
            assert_eq!(
                err_of(&ws.open_regular(Path::new("d")).unwrap_err()),
                InputError::NotRegular("a directory")
            );
            assert_eq!(read(ws.open_regular(Path::new("to-f")).unwrap()), b"x");
            for bad in ["..", ".", "a/b", ""] {
                assert_eq!(
                    top.lstat(name(bad)).unwrap_err().kind(),
                    io::ErrorKind::InvalidInput
                );
            }
            let st = top.lstat(name("d")).unwrap();
            assert!(st.is_dir() && !st.is_file() && !st.is_symlink());
            let f = ws.dir(Path::new("d")).unwrap().lstat(name("f")).unwrap();
            let meta = std::fs::symlink_metadata(path.join("d/f")).unwrap();
            assert_eq!(f.key, StatKey::from_metadata(&meta));
            assert_eq!(f.len(), 1);
        }
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
