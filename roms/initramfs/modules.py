#!/usr/bin/env python3
"""Prints the kernel modules that the named ones need, in an order they load in (each
after those it depends on), as depmod and modprobe would resolve them: from the
`depends=` field of each module's .modinfo section. One path per line, relative to the
modules tree; modules built into the kernel are left out.

usage: modules.py MODULES_TREE NAME...
"""
import os
import re
import sys


def main():
    tree, names = sys.argv[1], sys.argv[2:]
    index = {}
    for d, _, files in os.walk(tree):
        for f in files:
            if f.endswith(".ko"):
                index[f[:-3].replace("-", "_")] = os.path.join(d, f)

    def depends(name):
        with open(index[name], "rb") as f:
            m = re.search(rb"depends=([^\x00]*)\x00", f.read())
        if not m:
            return []
        return [d.replace("-", "_") for d in m.group(1).decode().split(",") if d]

    order = []

    def visit(name):
        name = name.replace("-", "_")
        if name in order:
            return
        if name not in index:
            sys.exit("modules.py: no module " + name + " in " + tree)
        for d in depends(name):
            visit(d)
        order.append(name)

    for n in names:
        visit(n)
    for n in order:
        print(os.path.relpath(index[n], tree))


if __name__ == "__main__":
    main()
