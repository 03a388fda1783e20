"""Shared fixtures: a real kvtierd on a temporary Unix socket."""

import os
import socket
import subprocess
import time

import pytest

import kvtier


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    """kvtierd from the build tree (KVTIER_KVTIERD), DRAM only, open mode
    unless `more_args` set tokens."""

    def __init__(self, binary, folder, more_args=()):
        self.socket_path = str(folder / "kvtierd.sock")
        self.log_path = folder / "kvtierd.log"
        argv = [
            binary,
            "--data-dir", str(folder),
            "--socket", self.socket_path,
            "--http", f"127.0.0.1:{_free_port()}",
            "--dram", "128MiB",
            "--huge-pages", "false",
        ]
        help_text = subprocess.run([binary, "--help"], capture_output=True, text=True).stdout
        if "--nvme " in help_text:
            argv += ["--nvme", "off"]
        argv += list(more_args)
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        options = kvtier.ClientOptions()
        options.socket_path = self.socket_path
        options.rpc_timeout_ms = 1000
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"kvtierd exited {self.process.returncode}: {self.log()}")
            try:
                if kvtier.Client.create(options).health()["serving"]:
                    return
            except kvtier.Error:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"kvtierd did not answer on {self.socket_path}: {self.log()}")
            time.sleep(0.05)

    def log(self):
        return self.log_path.read_text(errors="replace")

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@pytest.fixture
def start_kvtierd(tmp_path):
    """start(more_args) runs a kvtierd in tmp_path; stopped after the test."""
    binary = os.environ.get("KVTIER_KVTIERD")
    if not binary or not os.path.exists(binary):
        pytest.fail("KVTIER_KVTIERD must name the kvtierd binary of the build tree")
    started = []

    def start(more_args=()):
        started.append(Daemon(binary, tmp_path, more_args))
        return started[-1]

    yield start
    for d in started:
        d.stop()


@pytest.fixture
def kvtierd(start_kvtierd):
    return start_kvtierd()
