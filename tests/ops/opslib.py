"""Helpers of the operations tests: free ports, a kvtierd in a temporary
folder, the demo workload, and processes that die with the test."""
import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

_procs = []


def _cleanup():
    for p in _procs:
        if p.poll() is None:
            p.kill()
            p.wait()


atexit.register(_cleanup)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))


def skip(message):
    """Ends the test as skipped (ctest SKIP_RETURN_CODE 77)."""
    print(f"SKIPPED: {message}")
    sys.exit(77)


def fail(message):
    print(f"FAILED: {message}")
    sys.exit(1)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def temp_dir(name):
    d = tempfile.mkdtemp(prefix=f"kvtier-{name}-")
    atexit.register(shutil.rmtree, d, True)
    return d


def start(argv, log_path, **kw):
    """Starts a process killed at exit; output to log_path."""
    log = open(log_path, "wb")
    p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, **kw)
    _procs.append(p)
    return p


def http_get(url, headers=None, timeout=5):
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read().decode()


def wait_http(url, proc, log_path, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            fail(f"{url}: the process exited ({proc.returncode}):\n" + open(log_path).read())
        try:
            return http_get(url, timeout=2)
        except OSError:
            time.sleep(0.1)
    fail(f"{url} did not answer in {timeout}s:\n" + open(log_path).read())


def metric_names(url):
    """Metric names the /metrics page at `url` declares (histograms and
    summaries with their series)."""
    _, text = http_get(url + "/metrics")
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            names.add(name)
            if kind == "histogram":
                names.update({name + "_bucket", name + "_sum", name + "_count"})
            if kind == "summary":
                names.update({name + "_sum", name + "_count"})
    return names


class Kvtierd:
    """kvtierd on loopback in a temporary folder: DRAM plus a small NVMe tier."""

    def __init__(self, build_dir, extra=()):
        self.build_dir = build_dir
        self.dir = temp_dir("kvtierd")
        self.port = free_port()
        self.socket = os.path.join(self.dir, "kvtierd.sock")
        self.log = os.path.join(self.dir, "kvtierd.log")
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [os.path.join(build_dir, "src/server/kvtierd"), "--socket", self.socket,
                "--http", f"127.0.0.1:{self.port}", "--dram", "64MiB",
                "--nvme", os.path.join(self.dir, "nvme"), "--nvme-capacity", "64MiB",
                "--nvme-io-mode", "buffered", *extra]
        os.makedirs(os.path.join(self.dir, "nvme"))
        self.proc = start(argv, self.log)
        wait_http(self.url + "/readyz", self.proc, self.log)

    def demo(self, conversations=3, turns=3, check=True):
        """Runs `kvtier demo` against the daemon; returns the process."""
        cli = os.path.join(self.build_dir, "src/cli/kvtier")
        return subprocess.run([cli, "demo", "--quiet", "--conversations", str(conversations),
                               "--turns", str(turns), "--socket", self.socket],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=check,
                              timeout=120)

    def demo_loop(self):
        """Starts a shell loop of demos in the background (killed at exit)."""
        cli = os.path.join(self.build_dir, "src/cli/kvtier")
        script = (f'for i in $(seq 1 200); do "{cli}" demo --quiet --conversations 2 '
                  f'--turns 2 --seed $i --socket "{self.socket}" >/dev/null 2>&1; '
                  'sleep 0.2; done')
        return start(["bash", "-c", script], os.path.join(self.dir, "demo-loop.log"),
                     start_new_session=True)

    def metrics(self):
        """Samples of /metrics: {"name{labels}": value}."""
        _, text = http_get(self.url + "/metrics")
        out = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            series, _, value = line.rpartition(" ")
            out[series] = float(value)
        return out

    def metric_names(self):
        return metric_names(self.url)

    def status(self):
        _, text = http_get(self.url + "/api/v1/status")
        return json.loads(text)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


class NatsServer:
    """nats-server with JetStream on loopback in a temporary folder (killed at
    exit); skips the test when it is not installed."""

    def __init__(self):
        nats = shutil.which("nats-server") or "/usr/sbin/nats-server"
        if not os.path.exists(nats):
            skip("no nats-server (scripts/install-deps.sh installs it)")
        self.dir = temp_dir("nats")
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.log = os.path.join(self.dir, "nats.log")
        self.proc = start([nats, "-js", "-a", "127.0.0.1", "-p", str(self.port),
                           "-sd", os.path.join(self.dir, "jetstream")], self.log)
        deadline = time.time() + 20
        while True:
            if self.proc.poll() is not None:
                fail("nats-server exited:\n" + open(self.log).read())
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.time() > deadline:
                    fail("nats-server did not listen in 20s:\n" + open(self.log).read())
                time.sleep(0.1)


class KvtierIndex:
    """kvtier-index on loopback, fed by a nats-server with JetStream that it
    starts (both killed at exit)."""

    def __init__(self, build_dir):
        self.nats = NatsServer()
        self.dir = temp_dir("kvtier-index")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = os.path.join(self.dir, "kvtier-index.log")
        argv = [os.path.join(build_dir, "src/index/kvtier-index"), "--nats", self.nats.url,
                "--grpc", f"127.0.0.1:{free_port()}", "--http", f"127.0.0.1:{self.port}"]
        self.proc = start(argv, self.log)
        wait_http(self.url + "/readyz", self.proc, self.log)

    def metrics(self):
        """Samples of /metrics: {"name{labels}": value}."""
        _, text = http_get(self.url + "/metrics")
        out = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            series, _, value = line.rpartition(" ")
            out[series] = float(value)
        return out
