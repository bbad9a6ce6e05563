#!/bin/sh
# Rebuilds ../bin/cat from imgc-cat.c: a static, freestanding x86_64 Linux binary
# (no libc). Needs gcc targeting x86_64. Run from anywhere:
#   sh spec-examples/bases/runtime/src/build.sh
# The output is reproducible for a given gcc version (no build id, stripped).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out="$here/../bin/cat"
mkdir -p "$here/../bin"
gcc -nostdlib -static -no-pie -ffreestanding -fno-stack-protector -fno-builtin \
    -fno-asynchronous-unwind-tables -fno-ident -O2 -Wall -Wextra -Werror \
    -Wl,--build-id=none -Wl,-z,noexecstack -Wl,-z,norelro -s \
    -o "$out.tmp" "$here/imgc-cat.c"
chmod 0755 "$out.tmp"
mv "$out.tmp" "$out"
echo "built $(ls -l "$out" | awk '{print $5}') bytes: bin/cat"
