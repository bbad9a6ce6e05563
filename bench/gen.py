#!/usr/bin/env python3
"""Generate a synthetic imgc monorepo for benchmarks.

Usage:
    python3 bench/gen.py --out DIR [--images N] [--files-per-layer F]
                         [--file-size BYTES] [--base-files F] [--base-file-size BYTES]
                         [--seed S] [--random-fraction R] [--containerfiles]
    python3 bench/gen.py --out DIR --frontend-only [--packages P]

Build mode (default) writes:
    DIR/imgc.kdl                      the workspace root
    DIR/bases/BUILD.kdl               layer "files" + image "base" (from scratch)
    DIR/bases/files/dNN/fNNNNN.txt    F files of the base layer
    DIR/services/svc-NNNN/BUILD.kdl   layer "data" + image "svc-NNNN" from //bases:base
    DIR/services/svc-NNNN/data/...    F files of that service's own layer

so a cold `imgc build //...` hashes, tars and compresses about
(N + 1) * F * BYTES bytes. --base-files and --base-file-size give the base layer
other sizes than the services' (by default the same). With --containerfiles, every
package also gets a Containerfile doing the same with buildah or docker (COPY of the
same files, the same config; each service FROM localhost/imgc-bench/base), and the
files its inline text entries need (bases/os-release, services/svc-NNNN/version);
only the base's empty /tmp directory is left out (it would need a RUN step).
Examples:
    gen.py --out bench-ws --images 10 --files-per-layer 100 --file-size 1048576   # ~1.1 GB
    gen.py --out bench-ws --images 100 --files-per-layer 1000 --file-size 4096    # 101k small files

File contents are deterministic for a seed (same arguments, same bytes, on any
machine, Python 3.9 or later) and semi-compressible like real images: a mix of
text-like lines and random bytes, about 2.5x with gzip -6 at the default
--random-fraction 0.1 (more random bytes: less compressible). Every file is
distinct (it starts with its own path), so no two files deduplicate. Files are
slices of one pre-generated 32 MiB pool, so writing is bound by the disk: 1.1 GB
in 1,100 files took 9 s on a 2-core VM, 101,000 files of 4 KiB 12 s.

Frontend-only mode writes P packages (default 1000) under pkgs/ with specs and one
or two tiny files each: a workload for discovery, parsing, label resolution and
graph building, with cross-package `from` chains and shared layers.

Only the standard library is used. The generator never deletes anything: DIR must
not already hold an imgc.kdl unless --force is given (files are then overwritten).
"""

import argparse
import hashlib
import os
import random
import sys
import time

POOL_BYTES = 32 * 1024 * 1024
BLOCK = 4096
FILES_PER_DIR = 256


def make_vocab(rng):
    """Deterministic pseudo-words and code-like tokens."""
    syllables = [c + v for c in "bcdfghklmnprstvwz" for v in "aeiou"]
    words = set()
    while len(words) < 2000:
        words.add("".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))))
    words = sorted(words)
    tokens = ["=", "{", "}", "(", ")", ";", "->", "::", "0", "1", "true", "null",
              "return", "let", "fn", "if", "else", "for", "in", "self"]
    return words + tokens


def make_pool(seed, random_fraction):
    """POOL_BYTES of mixed text-like and random blocks, deterministic for seed."""
    rng = random.Random(seed)
    vocab = make_vocab(rng)
    # Zipf-like word frequencies, as in real text and code.
    cum, acc = [], 0.0
    for rank in range(len(vocab)):
        acc += 1.0 / (rank + 1)
        cum.append(acc)
    parts = []
    size = 0
    while size < POOL_BYTES:
        if rng.random() < random_fraction:
            chunk = rng.randbytes(BLOCK)
        else:
            words = rng.choices(vocab, cum_weights=cum, k=BLOCK // 5)
            lines = []
            i = 0
            while i < len(words):
                n = rng.randint(4, 14)
                lines.append("    " * rng.randint(0, 3) + " ".join(words[i:i + n]))
                i += n
            chunk = ("\n".join(lines) + "\n").encode()[:BLOCK]
            chunk = chunk.ljust(BLOCK, b"\n")
        parts.append(chunk)
        size += len(chunk)
    return memoryview(b"".join(parts)[:POOL_BYTES])


def file_offset(seed, rel):
    h = hashlib.blake2b(f"{seed}:{rel}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") % POOL_BYTES


def write_data_file(path, rel, size, pool, seed):
    header = f"# imgc bench file {rel}\n".encode()[:size]
    remaining = size - len(header)
    off = file_offset(seed, rel)
    with open(path, "wb") as f:
        f.write(header)
        while remaining > 0:
            n = min(remaining, POOL_BYTES - off)
            f.write(pool[off:off + n])
            remaining -= n
            off = 0


def write_text(path, text):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def write_files(root, pkg, subdir, count, size, pool, seed):
    """count files under root/pkg/subdir, sharded FILES_PER_DIR per directory."""
    for i in range(count):
        shard = f"d{i // FILES_PER_DIR:03d}"
        d = os.path.join(root, pkg, subdir, shard)
        if i % FILES_PER_DIR == 0:
            os.makedirs(d, exist_ok=True)
        name = f"f{i:05d}.txt"
        rel = f"{pkg}/{subdir}/{shard}/{name}"
        write_data_file(os.path.join(d, name), rel, size, pool, seed)
    return count * size


# The image name the generated Containerfiles of the services build FROM.
CONTAINERFILE_BASE = "localhost/imgc-bench/base"

WORKSPACE = """\
// Generated by bench/gen.py ({what}); do not edit.
workspace {{
    output-dir "imgc-out"
    source-date-epoch 1700000000
}}
"""


def gen_build(args):
    out = args.out
    pool = make_pool(args.seed, args.random_fraction)
    write_text(os.path.join(out, "imgc.kdl"),
               WORKSPACE.format(what=f"{args.images} images, seed {args.seed}"))

    os.makedirs(os.path.join(out, "bases"), exist_ok=True)
    write_text(os.path.join(out, "bases", "BUILD.kdl"), """\
layer "files" {
    copy "files" to="/usr/share/base"
    text "/etc/os-release" "ID=bench\\n"
    dir "/tmp" mode="1777"
}

image "base" {
    from "scratch"
    layers ":files"
    env PATH="/bin"
    label "org.opencontainers.image.title" "base"
}
""")
    total = write_files(out, "bases", "files", args.base_files,
                        args.base_file_size, pool, args.seed)
    if args.containerfiles:
        write_text(os.path.join(out, "bases", "os-release"), "ID=bench\n")
        write_text(os.path.join(out, "bases", "Containerfile"), """\
# Generated by bench/gen.py: what bases/BUILD.kdl builds, for buildah or docker.
FROM scratch
COPY files /usr/share/base
COPY os-release /etc/os-release
ENV PATH=/bin
LABEL org.opencontainers.image.title=base
""")

    for n in range(args.images):
        name = f"svc-{n:04d}"
        pkg = f"services/{name}"
        os.makedirs(os.path.join(out, pkg), exist_ok=True)
        write_text(os.path.join(out, pkg, "BUILD.kdl"), f"""\
layer "data" {{
    copy "data" to="/srv/{name}/data"
}}

image "{name}" {{
    from "//bases:base"
    layers ":data"
    layer {{
        text "/etc/{name}/version" "{n}\\n"
    }}
    entrypoint "/srv/{name}/run"
    env SERVICE="{name}"
    workdir "/srv/{name}"
    user "10001:10001"
    label "org.opencontainers.image.title" "{name}"
}}
""")
        total += write_files(out, pkg, "data", args.files_per_layer,
                             args.file_size, pool, args.seed)
        if args.containerfiles:
            write_text(os.path.join(out, pkg, "version"), f"{n}\n")
            write_text(os.path.join(out, pkg, "Containerfile"), f"""\
# Generated by bench/gen.py: what {pkg}/BUILD.kdl builds, for buildah or docker.
FROM {CONTAINERFILE_BASE}
COPY data /srv/{name}/data
COPY version /etc/{name}/version
ENTRYPOINT ["/srv/{name}/run"]
ENV SERVICE={name}
WORKDIR /srv/{name}
USER 10001:10001
LABEL org.opencontainers.image.title={name}
""")
    files = args.base_files + args.images * args.files_per_layer
    return files, total


def gen_frontend(args):
    """Many packages, specs only: exercises discovery, parsing and the graph."""
    out = args.out
    rng = random.Random(args.seed)
    write_text(os.path.join(out, "imgc.kdl"),
               WORKSPACE.format(what=f"frontend-only, {args.packages} packages"))
    os.makedirs(os.path.join(out, "bases"), exist_ok=True)
    write_text(os.path.join(out, "bases", "BUILD.kdl"), """\
layer "etc" {
    text "/etc/os-release" "ID=bench\\n"
    dir "/tmp" mode="1777"
}

image "base" {
    from "scratch"
    layers ":etc"
}
""")
    files = 1
    total = 0
    groups = 10
    for n in range(args.packages):
        group = f"g{n % groups:02d}"
        name = f"p{n:04d}"
        pkg = f"pkgs/{group}/{name}"
        d = os.path.join(out, pkg)
        os.makedirs(os.path.join(d, "conf"), exist_ok=True)
        # Chains: every package but the first of each group builds on the previous
        # package of its group, so cascades reach depth packages / groups.
        prev = n - groups
        base = (f"//pkgs/{group}/p{prev:04d}" if prev >= 0 and n % 7 != 0
                else "//bases:base")
        # Plus the layer of another, random package (layers never depend on images,
        # so this cannot make a cycle).
        m = rng.randrange(args.packages)
        shared = f"//pkgs/g{m % groups:02d}/p{m:04d}:conf"
        layers = '":conf"' if m == n else f'":conf" "{shared}"'
        body = f"""\
// Generated by bench/gen.py --frontend-only.
layer "conf" {{
    copy "conf/*.toml" to="/etc/{name}/" exclude="conf/dev-*.toml"
    text "/etc/{name}/id" "{name}\\n"
    dir "/var/lib/{name}" mode="0700" owner="10001:10001"
    symlink "/etc/{name}/current" target="/etc/{name}/app.toml"
}}

image "{name}" {{
    from "{base}"
    layers {layers}
    layer {{
        text "/etc/{name}/build" "{rng.getrandbits(64):016x}\\n"
    }}
    entrypoint "/bin/{name}"
    cmd "--config" "/etc/{name}/app.toml"
    env NAME="{name}" GROUP="{group}"
    user "10001:10001"
    expose "{8000 + n % 1000}/tcp"
    label "org.opencontainers.image.title" "{name}"
    annotation "com.example.group" "{group}"
    tag "registry.example.com/bench/{name}:latest"
}}
"""
        write_text(os.path.join(d, "BUILD.kdl"), body)
        for fname in ("app.toml", "dev-local.toml"):
            text = f'# {name} {fname}\nname = "{name}"\nworkers = {rng.randint(1, 64)}\n'
            write_text(os.path.join(d, "conf", fname), text)
            files += 1
            total += len(text)
    return files, total


def main(argv):
    p = argparse.ArgumentParser(
        description="Generate a synthetic imgc monorepo (see the module docstring).")
    p.add_argument("--out", required=True, help="directory to write (created)")
    p.add_argument("--images", type=int, default=10, help="service images (default 10)")
    p.add_argument("--files-per-layer", type=int, default=100,
                   help="files in the base layer and in each service layer (default 100)")
    p.add_argument("--file-size", type=int, default=64 * 1024,
                   help="bytes per file (default 65536)")
    p.add_argument("--base-files", type=int, default=None,
                   help="files in the base layer (default: --files-per-layer)")
    p.add_argument("--base-file-size", type=int, default=None,
                   help="bytes per file of the base layer (default: --file-size)")
    p.add_argument("--containerfiles", action="store_true",
                   help="also write an equivalent Containerfile per package (for buildah)")
    p.add_argument("--seed", type=int, default=1, help="content seed (default 1)")
    p.add_argument("--random-fraction", type=float, default=0.1,
                   help="share of random (incompressible) 4 KiB blocks (default 0.1)")
    p.add_argument("--frontend-only", action="store_true",
                   help="many packages, specs and tiny files only")
    p.add_argument("--packages", type=int, default=1000,
                   help="packages in --frontend-only mode (default 1000)")
    p.add_argument("--force", action="store_true",
                   help="write into a directory that already holds a workspace")
    args = p.parse_args(argv)
    if args.base_files is None:
        args.base_files = args.files_per_layer
    if args.base_file_size is None:
        args.base_file_size = args.file_size
    if (args.images < 0 or args.files_per_layer < 0 or args.file_size < 0 or args.packages < 0
            or args.base_files < 0 or args.base_file_size < 0):
        p.error("counts and sizes must not be negative")
    if not 0.0 <= args.random_fraction <= 1.0:
        p.error("--random-fraction must be between 0 and 1")
    if os.path.exists(os.path.join(args.out, "imgc.kdl")) and not args.force:
        p.error(f"{args.out} already holds a workspace (use --force to overwrite files)")
    os.makedirs(args.out, exist_ok=True)

    t0 = time.monotonic()
    files, total = gen_frontend(args) if args.frontend_only else gen_build(args)
    dt = time.monotonic() - t0
    print(f"wrote {files} files, {total / 1e6:.1f} MB of data to {args.out} "
          f"in {dt:.1f} s ({total / 1e6 / max(dt, 1e-9):.0f} MB/s)", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
