#!/usr/bin/env python3
"""deploy/systemd/kvtierd.service: `systemd-analyze verify` accepts it (with
kvtierd at the path the unit names, via a temporary root), and its command
line is one kvtierd accepts.

usage: systemd_test.py BUILD_DIR SOURCE_DIR"""
import configparser
import os
import shlex
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import opslib  # noqa: E402


def main():
    build, source = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    unit = os.path.join(source, "deploy/systemd/kvtierd.service")
    kvtierd = os.path.join(build, "src/server/kvtierd")
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    with open(unit) as f:
        parser.read_string(f.read())
    svc = parser["Service"]
    for key in ("ExecStart", "User", "Restart", "TimeoutStopSec", "LimitMEMLOCK",
                "AmbientCapabilities"):
        if key not in svc:
            opslib.fail(f"[Service] lacks {key}")
    if "CAP_IPC_LOCK" not in svc["AmbientCapabilities"]:
        opslib.fail("AmbientCapabilities lacks CAP_IPC_LOCK")
    if svc["User"] in ("root", "0"):
        opslib.fail("kvtierd must not run as root")

    # ExecStartPre checks the configuration ExecStart will run with.
    pre = svc.get("ExecStartPre", "")
    if pre and pre != svc["ExecStart"] + " --check-config":
        opslib.fail(f"ExecStartPre checks another command line than ExecStart: {pre}")
    # Documentation= points at a file the install puts there.
    docs = [d for d in parser["Unit"].get("Documentation", "").split()
            if d.startswith("file:///usr/local/share/doc/kvtier/")]
    for d in docs:
        name = d[len("file:///usr/local/share/doc/kvtier/"):]
        if not os.path.isfile(os.path.join(source, "docs", name)):
            opslib.fail(f"Documentation {d}: docs/{name} is not in the tree")

    # The command line parses: same flags, a config file of this machine.
    work = opslib.temp_dir("systemd")
    config = os.path.join(work, "kvtierd.yaml")
    with open(config, "w") as f:
        f.write("nvme:\n  enabled: false\ndram:\n  capacity: 64MiB\n")
    argv = shlex.split(svc["ExecStart"])
    argv[0] = kvtierd
    argv[argv.index("--config") + 1] = config
    argv[argv.index("--socket") + 1] = os.path.join(work, "kvtierd.sock")
    argv[argv.index("--data-dir") + 1] = work
    r = subprocess.run(argv + ["--check-config"], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        opslib.fail(f"{' '.join(argv)} --check-config: {r.stdout}")

    analyze = shutil.which("systemd-analyze")
    if not analyze:
        print("systemd-analyze not found: unit syntax not verified")
        opslib.skip("no systemd-analyze (package systemd)")
    # verify checks that the binaries exist: point them at the build's.
    copy = os.path.join(work, "kvtierd.service")
    with open(unit) as f:
        text = f.read().replace("/usr/local/bin/kvtierd", kvtierd)
    with open(copy, "w") as f:
        f.write(text)
    r = subprocess.run([analyze, "verify", "--man=no", copy], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    # Lines about units this one does not own (targets of the host) are not its problems.
    problems = [l for l in r.stdout.splitlines() if "kvtierd.service" in l]
    if r.returncode != 0 or problems:
        opslib.fail(f"systemd-analyze verify (exit {r.returncode}):\n{r.stdout}")
    print("systemd-analyze verify: clean")
    print("PASSED")


if __name__ == "__main__":
    main()
