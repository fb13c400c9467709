#!/usr/bin/env python3
"""Writes a gzip'd newc cpio archive from a list of entries, so that device nodes such as
/dev/console can be included without root (mknod) and without the cpio tool.

usage: mkcpio.py OUT.cpio.gz  [dir PATH | file PATH SRC MODE | node PATH MAJOR MINOR | link PATH TARGET]...
"""
import gzip
import sys


def header(ino, mode, size, namesize, rdev=(0, 0)):
    fields = [ino, mode, 0, 0, 1, 0, size, 0, 0, rdev[0], rdev[1], namesize, 0]
    return b"070701" + b"".join(b"%08x" % f for f in fields)


def pad4(n):
    return b"\0" * ((4 - n % 4) % 4)


def main():
    out, args = sys.argv[1], sys.argv[2:]
    data = bytearray()
    ino = 1

    def add(name, mode, body=b"", rdev=(0, 0)):
        nonlocal ino
        n = name.encode() + b"\0"
        h = header(ino, mode, len(body), len(n), rdev)
        data.extend(h + n + pad4(len(h) + len(n)))
        data.extend(body + pad4(len(body)))
        ino += 1

    i = 0
    while i < len(args):
        kind = args[i]
        if kind == "dir":
            add(args[i + 1], 0o040755)
            i += 2
        elif kind == "file":
            with open(args[i + 2], "rb") as f:
                add(args[i + 1], 0o100000 | int(args[i + 3], 8), f.read())
            i += 4
        elif kind == "node":
            add(args[i + 1], 0o020600, rdev=(int(args[i + 2]), int(args[i + 3])))
            i += 4
        elif kind == "link":
            add(args[i + 1], 0o120777, args[i + 2].encode())
            i += 3
        else:
            sys.exit("mkcpio.py: unknown entry kind " + kind)
    add("TRAILER!!!", 0)
    with gzip.GzipFile(out, "wb", mtime=0) as f:
        f.write(bytes(data))


if __name__ == "__main__":
    main()
