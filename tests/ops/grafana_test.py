#!/usr/bin/env python3
"""The Grafana dashboard in deploy/grafana/: its layout (overview, per tier,
per node, per namespace, cluster, refused calls; no two panels overlap), and
every metric its queries use exists in the /metrics of a running kvtierd that
served the demo workload or of a running kvtier-index. That kvtierd runs every
optional part the dashboard charts: a Blob tier (its endpoint is a closed
port: the tier is degraded), cluster events to a real nats-server, and
node-to-node reads from a static peer that does not answer (so kvtier_peer_up
has a series, at 0) with a peer token (kvtier_peer_auth_failures_total). The
index's own metrics (kvtier_index_auth_failures_total) come from the index;
the Node variable lists kvtierd instances, so a query does not narrow an
index metric by $instance.

usage: grafana_test.py BUILD_DIR SOURCE_DIR"""
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dashboard  # noqa: E402
import opslib  # noqa: E402


def overlaps(a, b):
    return (a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"]
            and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"])


def main():
    build, source = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    dash = dashboard.load(os.path.join(source, "deploy/grafana/kvtier-dashboard.json"))
    rows = [p["title"] for p in dashboard.panels(dash) if p["type"] == "row"]
    if rows != ["Overview", "Per tier", "Per node", "Per namespace", "Cluster", "Refused calls"]:
        opslib.fail(f"rows: {rows}")
    ids = [p["id"] for p in dashboard.panels(dash)]
    if len(ids) != len(set(ids)):
        opslib.fail(f"panel ids repeat: {ids}")
    variables = {v["name"] for v in dash["templating"]["list"]}
    for p in dashboard.panels(dash):
        if p["type"] == "row":
            continue
        if not p.get("targets"):
            opslib.fail(f"panel {p['title']!r} has no query")
        if p["datasource"]["uid"] != "${datasource}":
            opslib.fail(f"panel {p['title']!r}: datasource is not the $datasource variable")
        for k in ("x", "y", "w", "h"):
            if k not in p["gridPos"]:
                opslib.fail(f"panel {p['title']!r}: gridPos lacks {k}")
    placed = []
    for p in dashboard.panels(dash):
        g = p["gridPos"]
        if g["x"] < 0 or g["x"] + g["w"] > 24:
            opslib.fail(f"panel {p['title']!r}: gridPos {g} is not within the 24 columns")
        for q in placed:
            if overlaps(g, q["gridPos"]):
                opslib.fail(f"panels {q['title']!r} and {p['title']!r} overlap: "
                            f"{q['gridPos']} and {g}")
        placed.append(p)

    nats = opslib.NatsServer()
    work = opslib.temp_dir("grafana")
    key = os.path.join(work, "blob.key")
    with open(key, "w") as f:  # any base64 key: no request reaches a server
        f.write("a3Z0aWVyLW9wcy10ZXN0LWtleS1ub3QtYS1zZWNyZXQ=")
    admin = os.path.join(work, "admin.token")
    with open(admin, "w") as f:
        f.write("ops-admin-token-0123456789abcdef")
    peer_token = os.path.join(work, "peer.token")
    with open(peer_token, "w") as f:
        f.write("ops-peer-token-0123456789abcdef")
    dead_peer = f"127.0.0.1:{opslib.free_port()}"
    daemon = opslib.Kvtierd(build, extra=(
        "--node-id", "ops-node", "--nats", nats.url,
        "--tcp", f"127.0.0.1:{opslib.free_port()}", "--admin-token-file", admin,
        "--ucx", "true", "--peers", dead_peer, "--peer-token-file", peer_token,
        "--blob-endpoint", f"http://127.0.0.1:{opslib.free_port()}",
        "--blob-account", "devstoreaccount1", "--blob-container", "kvtier",
        "--blob-key-file", key))
    os.environ["KVTIER_TOKEN"] = "ops-admin-token-0123456789abcdef"  # for `kvtier demo`
    daemon.demo()
    # The demo's lookups asked the peer, which does not answer.
    series = f'kvtier_peer_up{{peer="{dead_peer}"}}'
    deadline = time.time() + 10
    while daemon.metrics().get(series) != 0:
        if time.time() > deadline:
            opslib.fail(f"{series} is not 0: {daemon.metrics().get(series)}")
        time.sleep(0.2)
    index = opslib.KvtierIndex(build)
    index_only = opslib.metric_names(index.url) - daemon.metric_names()
    exported = daemon.metric_names() | index_only
    exported.add("up")  # Prometheus' own series for every target
    used = set()
    for title, expr in dashboard.queries(dash):
        names = dashboard.metric_names(expr)
        if not names:
            opslib.fail(f"panel {title!r}: no metric in {expr!r}")
        for v in ("$instance", "$tokens_per_gpu_second"):
            if v in expr and v[1:] not in variables:
                opslib.fail(f"panel {title!r} uses {v}, which the dashboard does not define")
        missing = names - exported
        if missing:
            opslib.fail(f"panel {title!r} uses {sorted(missing)}, which neither kvtierd "
                        "nor kvtier-index exports")
        for name in names & index_only:
            if re.search(rf"\b{name}\{{[^}}]*\$instance", expr):
                opslib.fail(f"panel {title!r} narrows {name} (kvtier-index) by $instance, "
                            "which lists kvtierd nodes only")
        used |= names
    print(f"{len(list(dashboard.queries(dash)))} queries use {len(used)} metrics "
          f"({len(used & index_only)} of kvtier-index), all exported by kvtierd "
          f"({len(exported - index_only)} names) or kvtier-index")
    print("PASSED")


if __name__ == "__main__":
    main()
