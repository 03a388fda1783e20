#!/usr/bin/env python3
"""The Dockerfile: base images pinned to a Debian 12 point release (no
:latest), a non-root USER, runtime packages pinned to versions, and those
packages cover every shared library kvtierd, kvtier and kvtier-index name
(DT_NEEDED) here.

usage: dockerfile_test.py BUILD_DIR SOURCE_DIR"""
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import opslib  # noqa: E402

# In debian:12-slim already.
BASE = {"libc6", "libgcc-s1", "libstdc++6", "zlib1g"}


def main():
    build, source = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    text = open(os.path.join(source, "Dockerfile")).read()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    if len(froms) < 2:
        opslib.fail("want a multi-stage build")
    for f in froms:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), f)
        if not re.fullmatch(r"debian:12\.\d+-slim", image):
            opslib.fail(f"FROM {f} ({image}): want a pinned debian:12.N-slim tag")
    users = re.findall(r"^USER (\S+)", text, re.M)
    if not users or users[-1].split(":")[0] in ("0", "root"):
        opslib.fail(f"the image must end on a non-root USER, not {users}")
    runtime = text[text.rindex("\nFROM "):]
    pinned = dict(re.findall(r"^\s+([a-z0-9][a-z0-9.+-]+)=(\S+) \\$", runtime, re.M))
    unpinned = re.findall(r"^\s+([a-z0-9][a-z0-9.+-]+) \\$", runtime, re.M)
    if unpinned:
        opslib.fail(f"runtime packages without a version: {unpinned}")
    # The libraries each binary names itself (DT_NEEDED); apt brings their
    # own dependencies along with the pinned packages.
    libs = set()
    for binary in ("src/server/kvtierd", "src/cli/kvtier", "src/index/kvtier-index"):
        path = os.path.join(build, binary)
        dynamic = subprocess.run(["readelf", "-d", path], stdout=subprocess.PIPE,
                                 text=True, check=True).stdout
        direct = set(re.findall(r"\(NEEDED\)\s+Shared library: \[(\S+)\]", dynamic))
        out = subprocess.run(["ldd", path], stdout=subprocess.PIPE, text=True, check=True).stdout
        for soname, lib in re.findall(r"^\s*(\S+) => (\S+)", out, re.M):
            if soname in direct:
                libs.update({lib, os.path.realpath(lib)})
    # One dpkg -S for all: it reads the whole file database each call.
    r = subprocess.run(["dpkg", "-S", *sorted(libs)], stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL, text=True)
    needed = {line.split(":")[0] for line in r.stdout.splitlines() if ": " in line}
    missing = needed - BASE - set(pinned)
    if missing:
        opslib.fail(f"the runtime stage lacks packages the binaries link: {sorted(missing)}")
    print(f"{len(pinned)} runtime packages pinned; they cover {sorted(needed - BASE)}")
    print("PASSED")


if __name__ == "__main__":
    main()
