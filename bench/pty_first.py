#!/usr/bin/env python3
"""Time a command's first output on a terminal, and its silences.

Usage:
    python3 bench/pty_first.py [--runs N] [--prepare CMD] [--cols C] [--rows R]
                               [--log FILE] -- COMMAND [ARG...]

Runs COMMAND N times (default 5) on a fresh pseudo-terminal (its stdin, stdout and
stderr, and its controlling terminal; the window C x R, default 120 x 40; TERM
defaults to xterm-256color), reading everything it writes and timestamping each
chunk as it arrives. Before each run, CMD (if given) runs through `sh -c`, untimed.
Per run:

- first: time from the fork that execs COMMAND to the first byte on the terminal;
- gap: the longest time between two writes (or from the last write to the exit),
  i.e. the longest stretch in which the terminal showed nothing new at all (a
  spinner's animation counts as output);
- still: the longest time the *text* stood still (from the fork to the first byte
  counts too): chunks that only move a spinner (braille glyphs), redraw the same
  line or advance the elapsed-time counter are not new text, so a phase that shows
  only a spinner counts as still; the line shown then is printed with it;
- total: time to the exit.

Prints one line per run on stderr and, on stdout, two lines for scripts:
`FIRST_MS_MEDIAN GAP_MS_MAX STILL_MS_MAX TOTAL_MS_MEDIAN RUNS` (milliseconds), then
the text that stood still for STILL_MS_MAX (its last line as shown). Fails
(exit 1) if a run exits non-zero. With --log, the raw bytes of the last run go to
FILE with a timestamp before each chunk (`@12.3ms` on a line of its own).

Only the standard library is used (`pty`, `os`, `select`).
"""

import argparse
import fcntl
import os
import re
import select
import statistics
import struct
import subprocess
import sys
import termios
import time

ESCAPES = re.compile(rb"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>78]")
# indicatif's spinner glyphs (braille) and its `{elapsed}` at the end of a line.
SPINNER = re.compile("[\u2800-\u28ff]")
ELAPSED = re.compile(r"\s\d+[smhd]\s*$")


def visible(chunk):
    """The text of a chunk as a user would notice it change: escapes, spinner
    glyphs, the elapsed counter and blank space dropped, one string per line."""
    text = ESCAPES.sub(b"", chunk).decode("utf-8", "replace")
    lines = []
    for line in re.split(r"[\r\n]+", text):
        line = SPINNER.sub("", line)
        line = ELAPSED.sub("", line)
        line = " ".join(line.split())
        if line:
            lines.append(line)
    return lines


def run_once(argv, cols, rows):
    """One run: (chunks as [(seconds since fork, bytes)], exit status, seconds to exit)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    env = dict(os.environ)
    env.setdefault("TERM", "xterm-256color")
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(master)
            os.setsid()
            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
            for fd in (0, 1, 2):
                os.dup2(slave, fd)
            if slave > 2:
                os.close(slave)
            os.execvpe(argv[0], argv, env)
        except BaseException as e:  # noqa: BLE001 - the child must never return
            os.write(2, ("pty_first.py: cannot run %s: %s\n" % (argv[0], e)).encode())
        os._exit(127)
    os.close(slave)
    chunks = []
    while True:
        r, _, _ = select.select([master], [], [], 1.0)
        if not r:
            # Nothing to read: still running, or exited with the terminal closed.
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                end = time.monotonic() - t0
                break
            continue
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: every writer closed the terminal
            data = b""
        now = time.monotonic() - t0
        if not data:
            _, status = os.waitpid(pid, 0)
            end = time.monotonic() - t0
            break
        chunks.append((now, data))
    os.close(master)
    return chunks, os.waitstatus_to_exitcode(status), end


def measure(chunks, end):
    """(first, gap, still, the text that stood still longest); times in seconds."""
    if not chunks:
        return end, end, end, ""
    first = chunks[0][0]
    times = [t for t, _ in chunks] + [end]
    gap = max(b - a for a, b in zip(times, times[1:]))
    # When new text appeared, and what it was (before the first byte: nothing).
    shown, last = [(0.0, "(nothing)")], None
    for t, data in chunks:
        lines = visible(data)
        if lines and lines != last:
            shown.append((t, lines[-1]))
            last = lines
    shown.append((end, ""))
    still, text = max((b[0] - a[0], a[1]) for a, b in zip(shown, shown[1:]))
    return first, gap, still, text


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--prepare", help="shell command run before each run (untimed)")
    p.add_argument("--cols", type=int, default=120)
    p.add_argument("--rows", type=int, default=40)
    p.add_argument("--log", help="write the last run's output, timestamped, here")
    p.add_argument("command", nargs=argparse.REMAINDER)
    a = p.parse_args()
    argv = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not argv or a.runs < 1:
        p.error("give a command after `--` and --runs of at least 1")
    firsts, gaps, stills, totals = [], [], [], []
    still_text = ""
    for i in range(a.runs):
        if a.prepare:
            subprocess.run(["sh", "-c", a.prepare], check=True)
        chunks, code, end = run_once(argv, a.cols, a.rows)
        first, gap, still, text = measure(chunks, end)
        print(
            "run %d: first output %.1f ms, longest gap %.1f ms, text still for %.1f ms "
            "(%s), exit %d after %.1f ms, %d writes" % (
                i + 1, first * 1e3, gap * 1e3, still * 1e3, text[:80], code, end * 1e3,
                len(chunks)),
            file=sys.stderr,
        )
        if a.log:
            with open(a.log, "wb") as f:
                for t, data in chunks:
                    f.write(b"\n@%.1fms\n" % (t * 1e3))
                    f.write(data)
        if code != 0:
            sys.exit("pty_first.py: %s exited %d" % (" ".join(argv), code))
        if not stills or still > max(stills):
            still_text = text
        firsts.append(first)
        gaps.append(gap)
        stills.append(still)
        totals.append(end)
    print("%.1f %.1f %.1f %.1f %d" % (
        statistics.median(firsts) * 1e3, max(gaps) * 1e3, max(stills) * 1e3,
        statistics.median(totals) * 1e3, a.runs))
    print(" ".join(still_text.split()) or "-")


if __name__ == "__main__":
    main()
