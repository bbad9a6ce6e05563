//! Running imgc on a pseudo-terminal, and what a terminal would show after it.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, ExitStatus, Stdio};

/// The width the pseudo-terminal says it has.
pub const COLUMNS: u16 = 200;

/// Runs `cmd` with stdin, stdout and stderr on a new pseudo-terminal of
/// [`COLUMNS`] columns (`TERM=xterm` unless `cmd` sets it): its exit status and
/// every byte it wrote to the terminal, in order (the terminal turns `\n` into
/// `\r\n`).
pub fn run(mut cmd: Command) -> (ExitStatus, Vec<u8>) {
    let (mut master, slave) = open();
    if !cmd.get_envs().any(|(k, _)| k == "TERM") {
        cmd.env("TERM", "xterm");
    }
    cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave));
    let mut child = cmd.spawn().unwrap();
    // The command holds the terminal's other end until dropped: the reader sees the
    // end (EIO) only once the child's copies are closed too.
    drop(cmd);
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match master.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // EIO: every writer closed the terminal.
                Err(_) => break,
            }
        }
        out
    });
    let status = child.wait().unwrap();
    (status, reader.join().unwrap())
}

/// A new pseudo-terminal: its master (read) and slave ends, both close-on-exec.
fn open() -> (File, OwnedFd) {
    let (mut master, mut slave) = (-1, -1);
    let size = libc::winsize {
        ws_row: 40,
        ws_col: COLUMNS,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: plain FFI; the out-pointers are valid, the name and termios may be null.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: openpty just returned these descriptors; nothing else owns them.
    let (master, slave) = unsafe { (File::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    for fd in [master.as_raw_fd(), slave.as_raw_fd()] {
        // SAFETY: fcntl on a descriptor we own.
        assert_eq!(
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) },
            0
        );
    }
    (master, slave)
}

/// The text of `bytes` with every escape sequence removed (what was written, not
/// what is left on the screen): to find what was said, and in which order.
pub fn written_text(bytes: &[u8]) -> String {
    let mut out = String::new();
    let text = String::from_utf8_lossy(bytes);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            escape(&mut chars);
        } else {
            out.push(c);
        }
    }
    out
}

/// The screen a terminal of [`COLUMNS`] columns shows after `bytes` were written
/// to it, line by line (trailing blanks dropped; no scrolling region, nothing
/// scrolls off). Wraps as xterm does: a character written past the last column
/// goes to the start of the next line (so a line of exactly [`COLUMNS`]
/// characters followed by `\r` stays one line). Knows the cursor movements and
/// erasures a progress line uses; any other control sequence fails the test, so
/// that nothing the emulation does not understand passes unnoticed.
pub fn screen(bytes: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    let mut lines: Vec<Vec<char>> = vec![Vec::new()];
    let (mut row, mut col) = (0usize, 0usize);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => col = 0,
            '\n' => {
                row += 1;
                if row == lines.len() {
                    lines.push(Vec::new());
                }
            }
            '\x1b' => {
                let Some((params, fin)) = escape(&mut chars) else {
                    continue;
                };
                let n = params.parse::<usize>().unwrap_or(0);
                let line = &mut lines[row];
                match (fin, params.as_str()) {
                    ('m', _) | ('h' | 'l', "?25") => {}
                    ('K', "" | "0") => line.truncate(col),
                    ('K', "1") => line.iter_mut().take(col + 1).for_each(|c| *c = ' '),
                    ('K', "2") => line.clear(),
                    ('A', _) => row = row.saturating_sub(n.max(1)),
                    ('B', _) => {
                        row += n.max(1);
                        while lines.len() <= row {
                            lines.push(Vec::new());
                        }
                    }
                    ('C', _) => col += n.max(1),
                    ('D', _) => col = col.saturating_sub(n.max(1)),
                    ('G', _) => col = n.max(1) - 1,
                    ('J', "" | "0") => {
                        line.truncate(col);
                        lines.truncate(row + 1);
                    }
                    _ => panic!("unexpected control sequence ESC [{params}{fin}"),
                }
            }
            c if c.is_control() => panic!("unexpected control character {c:?}"),
            c => {
                if col >= usize::from(COLUMNS) {
                    row += 1;
                    col = 0;
                    if row == lines.len() {
                        lines.push(Vec::new());
                    }
                }
                let line = &mut lines[row];
                if line.len() < col {
                    line.resize(col, ' ');
                }
                if col < line.len() {
                    line[col] = c;
                } else {
                    line.push(c);
                }
                col += 1;
            }
        }
    }
    lines
        .into_iter()
        .map(|l| l.into_iter().collect::<String>().trim_end().to_string())
        .collect()
}

/// Consumes an escape sequence after its ESC: `Some((parameters, final byte))` for
/// a control sequence (`ESC [ ...`), `None` for anything else (skipped).
fn escape(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<(String, char)> {
    if chars.peek() != Some(&'[') {
        chars.next();
        return None;
    }
    chars.next();
    let mut params = String::new();
    for c in chars.by_ref() {
        if ('\x40'..='\x7e').contains(&c) {
            return Some((params, c));
        }
        params.push(c);
    }
    None
}

/// Whether `s` holds a spinner glyph (indicatif draws braille patterns).
pub fn has_spinner(s: &str) -> bool {
    s.chars().any(|c| ('\u{2800}'..='\u{28ff}').contains(&c))
}
