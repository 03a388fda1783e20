#!/usr/bin/env python3
"""Debian's Prometheus scrapes a real kvtierd and a real kvtier-index (fed by
a nats-server the test starts): the scrape configuration from
deploy/prometheus/scrape_config.py with kvtier's alert rules loaded, then
kvtier series read back through Prometheus' HTTP API.

usage: prometheus_test.py BUILD_DIR SOURCE_DIR"""
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dashboard  # noqa: E402
import opslib  # noqa: E402


def query(base, promql):
    _, text = opslib.http_get(base + "/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
    doc = json.loads(text)
    if doc.get("status") != "success":
        opslib.fail(f"query {promql!r}: {text}")
    return doc["data"]["result"]


def main():
    build, source = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    prometheus = shutil.which("prometheus")
    if not prometheus:
        opslib.skip("no prometheus binary (scripts/install-deps.sh installs Debian's prometheus)")
    daemon = opslib.Kvtierd(build)
    daemon.demo()
    index = opslib.KvtierIndex(build)

    work = opslib.temp_dir("prometheus")
    rules = os.path.join(source, "deploy/prometheus/kvtier-alerts.yaml")
    # (job, port) of each binary scraped.
    targets = [("kvtierd", daemon.port), ("kvtier-index", index.port)]
    args = [a for job, port in targets for a in ("--target", f"{job}=127.0.0.1:{port}")]
    config = subprocess.run(
        [sys.executable, os.path.join(source, "deploy/prometheus/scrape_config.py"), *args,
         "--rules", rules, "--interval", "1s"],
        check=True, stdout=subprocess.PIPE, text=True).stdout
    config_path = os.path.join(work, "prometheus.yml")
    with open(config_path, "w") as f:
        f.write(config)
    port = opslib.free_port()
    log = os.path.join(work, "prometheus.log")
    proc = opslib.start([prometheus, f"--config.file={config_path}",
                         f"--storage.tsdb.path={os.path.join(work, 'data')}",
                         f"--web.listen-address=127.0.0.1:{port}"], log)
    base = f"http://127.0.0.1:{port}"
    opslib.wait_http(base + "/-/ready", proc, log, timeout=30)

    # The rules are loaded (the rule manager starts just after /-/ready).
    want = {"KvtierTierFull", "KvtierChecksumFailures", "KvtierBlobDegraded",
            "KvtierPeerUnreachable", "KvtierHitRateCollapse"}
    deadline = time.time() + 15
    while True:
        _, text = opslib.http_get(base + "/api/v1/rules")
        names = {r["name"] for g in json.loads(text)["data"]["groups"] for r in g["rules"]}
        if want <= names:
            break
        if time.time() > deadline:
            opslib.fail(f"rules {sorted(want - names)} not loaded; loaded: {sorted(names)}")
        time.sleep(0.2)

    # Wait for a scrape, then compare what Prometheus stored with /metrics.
    deadline = time.time() + 30
    while time.time() < deadline:
        up = query(base, "up == 1")
        hits = query(base, 'kvtier_lookup_hit_chunks_total{job="kvtierd"}')
        ready = query(base, 'kvtier_index_ready{job="kvtier-index"}')
        if {r["metric"]["job"] for r in up} == {job for job, _ in targets} and hits and ready:
            break
        time.sleep(0.5)
    else:
        opslib.fail("no kvtier series in Prometheus after 30s:\n" + open(log).read()[-3000:])
    direct = daemon.metrics()
    got = float(hits[0]["value"][1])
    if got != direct["kvtier_lookup_hit_chunks_total"] or got <= 0:
        opslib.fail(f"kvtier_lookup_hit_chunks_total: prometheus {got}, "
                    f"/metrics {direct['kvtier_lookup_hit_chunks_total']}")
    tiers = {r["metric"]["tier"] for r in query(base, 'kvtier_capacity_bytes{job="kvtierd"}')}
    if tiers != {"dram", "nvme"}:
        opslib.fail(f"kvtier_capacity_bytes tiers: {tiers}")
    names = query(base, 'count by (__name__) ({job="kvtierd", __name__=~"kvtier_.+"})')
    print(f"prometheus stored {len(names)} kvtier metric names from kvtierd; "
          f"hit chunks {got:.0f}, tiers {sorted(tiers)}")
    # kvtier-index: its series arrive under their job, with the values it serves.
    if float(ready[0]["value"][1]) != 1 or index.metrics()["kvtier_index_ready"] != 1:
        opslib.fail(f"kvtier_index_ready: prometheus {ready}")
    max_entries = query(base, 'kvtier_index_max_entries{job="kvtier-index"}')
    direct_max = index.metrics()["kvtier_index_max_entries"]
    if not max_entries or float(max_entries[0]["value"][1]) != direct_max or direct_max <= 0:
        opslib.fail(f"kvtier_index_max_entries: prometheus {max_entries}, /metrics {direct_max}")
    index_names = query(base, 'count by (__name__) ({job="kvtier-index", __name__=~"kvtier_.+"})')
    print(f"prometheus stored {len(index_names)} kvtier metric names from kvtier-index")
    # The hit-rate expression of the alert evaluates on real data.
    rate = query(base, 'sum(kvtier_lookup_hit_chunks_total) / sum(kvtier_lookup_chunks_total)')
    if not rate or not 0 < float(rate[0]["value"][1]) <= 1:
        opslib.fail(f"hit rate from Prometheus: {rate}")
    # Every query of the Grafana dashboard is valid PromQL that Prometheus runs.
    dash = dashboard.load(os.path.join(source, "deploy/grafana/kvtier-dashboard.json"))
    n = 0
    for title, expr in dashboard.queries(dash):
        query(base, dashboard.concrete(expr))
        n += 1
    print(f"all {n} dashboard queries run on Prometheus")
    print("PASSED")


if __name__ == "__main__":
    main()
