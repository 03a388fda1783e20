#!/usr/bin/env python3
"""Renders every Kustomize overlay in deploy/k8s/ with `kubectl kustomize` and
checks the result: probes, resource limits, non-root, pinned image tags,
ports that match kvtierd's configuration, hugepages that hold the DRAM tier,
the ConfigMap's kvtierd YAML accepted by `kvtierd --check-config`, NATS
behind TLS and a token for every client, the index's API and status tokens
in files of a Secret volume (which the kubelet updates and the index reads
again), and overlays/aks-rdma's kvtierd.yaml no different from the aks one
it copies but in the keys it is meant to change.

usage: k8s_test.py BUILD_DIR SOURCE_DIR"""
import os
import re
import shutil
import subprocess
import sys

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import opslib  # noqa: E402

WORKLOADS = ("DaemonSet", "Deployment", "StatefulSet")
UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 10**3, "M": 10**6,
         "G": 10**9, "T": 10**12, "": 1}
errors = []
# Dotted keys in which overlays/aks-rdma/kvtierd.yaml, a copy of
# overlays/aks/kvtierd.yaml (Kustomize cannot patch inside a generated file),
# differs on purpose: node-to-node reads over UCX, and the index that names
# the holders. A difference anywhere else is drift.
RDMA_CONFIG_CHANGES = {
    "cluster.index_address", "cluster.index_token_file", "cluster.index_ca_file",
    "ucx.enabled", "ucx.peer_token_file", "ucx.peer_tls_name",
}


def check(cond, message):
    if not cond:
        errors.append(message)


def quantity(q):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]i?)?", str(q))
    return float(m.group(1)) * UNITS[m.group(2) or ""] if m else None


def byte_size(text):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]i?)?B?", str(text))
    return float(m.group(1)) * UNITS[m.group(2) or ""] if m else None


def port_of(host_port):
    return int(str(host_port).rsplit(":", 1)[1])


def kustomize_ok(kubectl):
    out = subprocess.run([kubectl, "version", "--client"], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True).stdout
    m = re.search(r"Kustomize Version: v(\d+)\.(\d+)", out)
    return m and (int(m.group(1)), int(m.group(2))) >= (4, 5), out.strip()


def check_config(kvtierd, name, text, work):
    """kvtierd --check-config on the ConfigMap's YAML, its absolute paths
    moved under a temporary root (token and TLS files made up)."""
    name = name.replace("/", "-")
    root = os.path.join(work, name)
    doc = yaml.safe_load(text)

    def relocate(node, key_path):
        if isinstance(node, dict):
            return {k: relocate(v, f"{key_path}.{k}" if key_path else k) for k, v in node.items()}
        if isinstance(node, str) and node.startswith("/"):
            moved = root + node
            if key_path.endswith("_file"):
                os.makedirs(os.path.dirname(moved), exist_ok=True)
                with open(moved, "w") as f:
                    f.write("token-for-the-config-check-0123456789\n")
            elif key_path == "listen.unix_socket":
                os.makedirs(os.path.dirname(moved), exist_ok=True)
            else:
                os.makedirs(moved, exist_ok=True)
            return moved
        return node

    path = os.path.join(work, f"{name}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(relocate(doc, ""), f)
    # dram.capacity is checked against this machine's memory; the node's is
    # checked against the hugepages limit below instead.
    r = subprocess.run([kvtierd, "--check-config", "--config", path, "--dram", "64MiB"],
                       stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    check(r.returncode == 0, f"{name}: kvtierd --check-config failed: {r.stdout.strip()}")
    return doc


def flatten(node, prefix=""):
    """{dotted key: value} of the leaves of a YAML mapping."""
    if not isinstance(node, dict) or not node:
        return {prefix: node}
    out = {}
    for k, v in node.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def check_rdma_config(k8s):
    """overlays/aks-rdma/kvtierd.yaml is overlays/aks/kvtierd.yaml but for
    RDMA_CONFIG_CHANGES: a change to aks must be copied to aks-rdma."""
    configs = []
    for overlay in ("aks", "aks-rdma"):
        with open(os.path.join(k8s, "overlays", overlay, "kvtierd.yaml")) as f:
            configs.append(flatten(yaml.safe_load(f)))
    aks, rdma = configs
    absent = object()
    differ = sorted(k for k in aks.keys() | rdma.keys()
                    if aks.get(k, absent) != rdma.get(k, absent))
    drift = [f"{k} (aks {aks.get(k, 'absent')!r}, aks-rdma {rdma.get(k, 'absent')!r})"
             for k in differ if k not in RDMA_CONFIG_CHANGES]
    check(not drift, "overlays/aks-rdma/kvtierd.yaml differs from overlays/aks/kvtierd.yaml in "
          f"{', '.join(drift)}: copy the aks setting, or add the key to RDMA_CONFIG_CHANGES "
          "if aks-rdma needs it")
    same = sorted(RDMA_CONFIG_CHANGES - set(differ))
    check(not same, f"RDMA_CONFIG_CHANGES lists {', '.join(same)}, the same in both files: "
          "keep the list to what aks-rdma changes")


def containers(spec):
    return spec.get("initContainers", []) + spec.get("containers", [])


def check_overlay(name, docs, kvtierd, work):
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    for kind in ("DaemonSet", "Deployment", "StatefulSet", "Service", "ServiceMonitor",
                 "NetworkPolicy", "ConfigMap", "Namespace"):
        check(kind in by_kind, f"{name}: no {kind}")
    for w in (d for d in docs if d["kind"] in WORKLOADS):
        wname = f"{name}: {w['kind']}/{w['metadata']['name']}"
        pod = w["spec"]["template"]["spec"]
        pod_sc = pod.get("securityContext", {})
        check(pod.get("automountServiceAccountToken") is False,
              f"{wname}: automountServiceAccountToken must be false")
        for c in containers(pod):
            cname = f"{wname} container {c['name']}"
            image = c["image"]
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            check(tag and tag != "latest" and ("@sha256:" in image or re.match(r"v?\d", tag)),
                  f"{cname}: image {image!r} is not pinned to a version")
            res = c.get("resources", {})
            for k in ("cpu", "memory"):
                check(k in res.get("requests", {}), f"{cname}: no {k} request")
                check(k in res.get("limits", {}), f"{cname}: no {k} limit")
            sc = c.get("securityContext", {})
            check(sc.get("allowPrivilegeEscalation") is False,
                  f"{cname}: allowPrivilegeEscalation must be false")
            check("ALL" in sc.get("capabilities", {}).get("drop", []),
                  f"{cname}: capabilities must drop ALL")
            unreadable = unreadable_secrets(pod, c)
            check(not unreadable,
                  f"{cname}: Secret volume(s) {', '.join(unreadable)} hold files without "
                  f"'other' read (defaultMode or an item's mode) and the pod sets no fsGroup: "
                  f"the kubelet writes them owned by root, so uid "
                  f"{sc.get('runAsUser', pod_sc.get('runAsUser'))} cannot read them; set the "
                  f"pod's fsGroup (the kubelet then gives the files that group, read-only)")
            is_init = c in pod.get("initContainers", [])
            if not is_init:
                check(sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True
                      and sc.get("runAsUser", pod_sc.get("runAsUser", 0)) != 0,
                      f"{cname}: must run as a non-root user")
                check("livenessProbe" in c and "readinessProbe" in c,
                      f"{cname}: needs liveness and readiness probes")
                named = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
                for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                    port = c.get(probe, {}).get("httpGet", {}).get("port")
                    if port is not None:
                        check(port in named or port in named.values(),
                              f"{cname}: {probe} port {port!r} is not a container port")

    # kvtierd: config, ports, probes, capabilities, hugepages.
    cms = [d for d in docs if d["kind"] == "ConfigMap" and
           d["metadata"]["name"].startswith("kvtierd-config")]
    check(len(cms) == 1, f"{name}: want one kvtierd-config ConfigMap")
    ds = [d for d in docs if d["kind"] == "DaemonSet" and d["metadata"]["name"] == "kvtierd"]
    if len(cms) != 1 or len(ds) != 1:
        return
    config = check_config(kvtierd, name, cms[0]["data"]["kvtierd.yaml"], work)
    pod = ds[0]["spec"]["template"]["spec"]
    c = next(x for x in pod["containers"] if x["name"] == "kvtierd")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    http = port_of(config["listen"]["http"])
    check(ports.get("http") == http, f"{name}: containerPort http {ports.get('http')} "
          f"!= listen.http port {http}")
    if config["listen"].get("tcp"):
        tcp = port_of(config["listen"]["tcp"])
        check(ports.get("grpc") == tcp, f"{name}: containerPort grpc {ports.get('grpc')} "
              f"!= listen.tcp port {tcp}")
    check(c["livenessProbe"]["httpGet"]["path"] == "/healthz", f"{name}: liveness not /healthz")
    check(c["readinessProbe"]["httpGet"]["path"] == "/readyz", f"{name}: readiness not /readyz")
    check("IPC_LOCK" in c["securityContext"]["capabilities"].get("add", []),
          f"{name}: kvtierd needs IPC_LOCK for the pinned arena")
    check(config["listen"].get("status_token_file") or config["listen"].get("status_token"),
          f"{name}: listen.http is not loopback: set listen.status_token_file")
    if config.get("dram", {}).get("huge_pages"):
        want = byte_size(config["dram"]["capacity"])
        got = quantity(c["resources"]["limits"].get("hugepages-2Mi", "0"))
        check(got is not None and want is not None and got >= want,
              f"{name}: hugepages-2Mi limit {c['resources']['limits'].get('hugepages-2Mi')} "
              f"< dram.capacity {config['dram']['capacity']}")
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    for key in ("data_dir",):
        check(config[key] in mounts, f"{name}: {key} {config[key]} is not a volume mount")
    check(config["nvme"]["path"] in mounts, f"{name}: nvme.path is not a volume mount")
    check(os.path.dirname(config["listen"]["unix_socket"]) in mounts,
          f"{name}: the socket folder is not a volume mount (engines cannot reach it)")
    for key in ("status_token_file",):
        f = config["listen"].get(key)
        if f:
            check(os.path.dirname(f) in mounts, f"{name}: listen.{key} folder not mounted")
    cluster = config.get("cluster", {})
    if cluster.get("nats_url"):
        check_nats_client(f"{name}: kvtierd", cluster["nats_url"], cluster.get("nats_ca_file"),
                          mounts)
    # Services and ServiceMonitors point at named container ports.
    for svc in (d for d in docs if d["kind"] == "Service"):
        sel = svc["spec"]["selector"]
        pods = [w for w in docs if w["kind"] in WORKLOADS and
                all(w["spec"]["template"]["metadata"]["labels"].get(k) == v
                    for k, v in sel.items())]
        check(pods, f"{name}: Service {svc['metadata']['name']} selects no workload")
        for w in pods:
            names = {p["name"] for x in w["spec"]["template"]["spec"]["containers"]
                     for p in x.get("ports", [])}
            for p in svc["spec"]["ports"]:
                check(p["targetPort"] in names, f"{name}: Service {svc['metadata']['name']} "
                      f"targetPort {p['targetPort']} is not a port of {w['metadata']['name']}")
    for sm in (d for d in docs if d["kind"] == "ServiceMonitor"):
        sel = sm["spec"]["selector"]["matchLabels"]
        svcs = [s for s in docs if s["kind"] == "Service" and
                all(s["metadata"].get("labels", {}).get(k) == v for k, v in sel.items())]
        check(svcs, f"{name}: ServiceMonitor {sm['metadata']['name']} matches no Service")
        for s in svcs:
            for e in sm["spec"]["endpoints"]:
                check(e["port"] in {p["name"] for p in s["spec"]["ports"]},
                      f"{name}: ServiceMonitor port {e['port']} not on {s['metadata']['name']}")
    check_index(name, docs, config, kvtier_index_path(kvtierd), work)
    return pod, c


def unreadable_secrets(pod, c):
    """Names of the Secret volumes container `c` mounts whose files a
    non-root `c` cannot read. The kubelet writes them owned by root:root
    with the volume's modes; with the pod's fsGroup it gives them that group
    and adds group read (and the container is in that group)."""
    sc, pod_sc = c.get("securityContext", {}), pod.get("securityContext", {})
    if sc.get("runAsUser", pod_sc.get("runAsUser")) in (None, 0) or "fsGroup" in pod_sc:
        return []
    volumes = {v["name"]: v["secret"] for v in pod.get("volumes", []) if "secret" in v}
    out = []
    for m in c.get("volumeMounts", []):
        v = volumes.get(m["name"])
        if v is None:
            continue
        default = v.get("defaultMode", 0o644)
        modes = [i.get("mode", default) for i in v.get("items", [])] or [default]
        if any(not mode & 0o004 for mode in modes):
            out.append(m["name"])
    return out


def kvtier_index_path(kvtierd):
    return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(kvtierd))),
                        "src/index/kvtier-index")


def check_index(name, docs, config, kvtier_index, work):
    """kvtier-index as the Deployment runs it (its flags, and the environment
    from its ConfigMap and Secrets) via --check-config: it must reach the
    NATS Service kvtierd publishes to and listen on its container ports, and
    read its tokens from files that change with the Secret."""
    nats_url = config.get("cluster", {}).get("nats_url", "")
    nats_svcs = [d["metadata"]["name"] for d in docs
                 if d["kind"] == "Service" and d["metadata"]["name"] == "nats"]
    if nats_svcs:
        check(re.match(r"(nats|tls)://nats\.[a-z0-9-]+\.svc:4222$", nats_url or ""),
              f"{name}: kvtierd's cluster.nats_url {nats_url!r} is not the nats Service: "
              "nothing reaches the cluster index")
    deps = [d for d in docs if d["kind"] == "Deployment" and
            d["metadata"]["name"] == "kvtier-index"]
    if not deps:
        return
    index_pod = deps[0]["spec"]["template"]["spec"]
    c = index_pod["containers"][0]
    token_files = check_index_token_files(name, index_pod, c)
    env = {}
    for ref in c.get("envFrom", []):
        cm_name = ref.get("configMapRef", {}).get("name")
        for d in docs:
            if d["kind"] == "ConfigMap" and d["metadata"]["name"] == cm_name:
                env.update(d.get("data", {}))
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "secretKeyRef" in e.get("valueFrom", {}):
            env[e["name"]] = "secret-for-the-config-check-0123456789"
    # Files the flags name (TLS certificate and key, token files) are made up
    # under a temporary root, as check_config does for kvtierd's.
    root = os.path.join(work, name.replace("/", "-") + "-index")
    args = []
    for a in c["command"][1:]:
        if a.startswith("/etc/"):
            moved = root + a
            os.makedirs(os.path.dirname(moved), exist_ok=True)
            with open(moved, "w") as f:
                if args and args[-1].endswith("token-file"):
                    f.write("token-for-the-config-check-0123456789\n")
                else:
                    f.write("made up for the config check\n")
            a = moved
        args.append(a)
    r = subprocess.run([kvtier_index, "--check-config"] + args,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       env=dict(os.environ, **env))
    check(r.returncode == 0, f"{name}: kvtier-index --check-config failed: {r.stdout.strip()}")
    if r.returncode != 0:
        return
    eff = yaml.safe_load(r.stdout)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    check(eff["nats"]["url"] == nats_url,
          f"{name}: kvtier-index reads NATS at {eff['nats']['url']!r}, kvtierd publishes to "
          f"{nats_url!r}")
    check(ports.get("grpc") == port_of(eff["grpc"]) and not eff["grpc"].startswith("127."),
          f"{name}: kvtier-index serves gRPC on {eff['grpc']}, containerPort grpc is "
          f"{ports.get('grpc')}")
    check(ports.get("http") == port_of(eff["http"]),
          f"{name}: kvtier-index http {eff['http']} != containerPort {ports.get('http')}")
    check(eff["http"].startswith("127.") or eff["status_token"],
          f"{name}: kvtier-index http is not loopback and has no status token")
    check(eff["tls"]["cert_file"] and eff["api_token"],
          f"{name}: kvtier-index serves its API off loopback without TLS or a token")
    # Volumes hold what the flags name.
    mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
    check(os.path.dirname(eff["tls"]["cert_file"].replace(root, "")) in mounts,
          f"{name}: kvtier-index's TLS folder is not a volume mount")
    index_nats_ca = eff["nats"]["ca_file"].replace(root, "")
    check_nats_client(f"{name}: kvtier-index", eff["nats"]["url"], index_nats_ca, mounts)
    server = nats_server(name, docs)
    if server is None:
        return
    check_nats_conf(name, server, work)
    check_nats_tls(name, docs, server, config, index_pod, c, index_nats_ca)
    check_tokens(name, docs, config, c, server, token_files.get("--api-token-file"))


# kvtier-index's tokens read again while it runs when they come from files:
# (flag, the variable that would fix the token at start, what the token is).
INDEX_TOKEN_FILES = (("--api-token-file", "KVTIER_INDEX_TOKEN", "API token"),
                     ("--status-token-file", "KVTIER_STATUS_TOKEN", "status page token"))


def flag_value(command, flag):
    """The value of the last `flag VALUE` or `flag=VALUE` of a command line."""
    value = None
    for i, a in enumerate(command):
        if a == flag and i + 1 < len(command):
            value = command[i + 1]
        elif a.startswith(flag + "="):
            value = a[len(flag) + 1:]
    return value


def check_index_token_files(name, pod, c):
    """kvtier-index takes its API and status tokens from files of a mounted
    Secret volume, without subPath: it reads them again every
    tls.reload_seconds and the kubelet updates such files when the Secret
    changes, so a replaced token takes effect without a restart. A token from
    the environment or a flag is read at start only; a subPath mount is never
    updated. The volume holds only the keys the index reads.
    Returns {flag: (secret, key)} of the files found."""
    found, volumes = {}, set()
    env = {e["name"] for e in c.get("env", [])}
    for flag, var, what in INDEX_TOKEN_FILES:
        who = f"{name}: kvtier-index's {what}"
        check(var not in env,
              f"{who}: {var} is set, and the environment is read at start only: take the "
              f"token from the Secret volume with {flag} and drop the variable")
        path = flag_value(c["command"], flag)
        check(path, f"{who} is not read from a file ({flag}): a token from the environment "
              "or a flag is read at start only, so a changed kvtier-tokens key would need "
              "a restart of every replica")
        if not path:
            continue
        got = secret_file(pod, c, path)
        check(got, f"{who} {path} is not a file of a mounted Secret volume (the mount's "
              "folder, the volume's items): the index does not start")
        if not got:
            continue
        check(not got["sub_path"],
              f"{who} {path} is mounted with subPath {got['sub_path']!r}: the kubelet never "
              "updates a subPath mount, so the index would read the old token again after "
              "the Secret changes; mount the volume's folder")
        found[flag] = (got["secret"], got["key"])
        volumes.add(got["volume"])
    read = {key for _, key in found.values()}
    for v in (x for x in pod.get("volumes", []) if x["name"] in volumes):
        items = v["secret"].get("items")
        extra = sorted({i["key"] for i in items or []} - read)
        check(items and not extra,
              f"{name}: kvtier-index's volume {v['name']} holds "
              + (f"keys it does not read ({', '.join(extra)})" if items else
                 f"every key of {v['secret']['secretName']} (admin-token, peer-token too)")
              + f": list only {', '.join(sorted(read))} in its items")
    return found


def check_nats_client(who, url, ca_file, mounts):
    """A NATS client of the manifests asks for TLS (tls:// URLs: a server
    without TLS is refused, not sent the token) and checks the server's
    certificate against a CA it has mounted."""
    check(url and all(u.strip().startswith("tls://") for u in url.split(",")),
          f"{who} reads NATS at {url!r}, not tls://: the NATS token and every chunk event "
          "cross the pod network in clear")
    check(ca_file, f"{who} has no CA for NATS' certificate (nats_ca_file, --nats-ca)")
    if ca_file:
        check(os.path.dirname(ca_file) in mounts,
              f"{who}: the folder of NATS' CA {ca_file} is not a volume mount")


def secret_key(container, var):
    """(secret, key) of an environment variable from a secretKeyRef."""
    for e in container.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if e["name"] == var and ref:
            return ref["name"], ref["key"]
    return None


def mounted_secret_key(docs, path):
    """(secret, key) kvtierd reads at `path`, through its DaemonSet's mounts."""
    ds = [d for d in docs if d["kind"] == "DaemonSet" and d["metadata"]["name"] == "kvtierd"]
    if not ds or not path:
        return None
    pod = ds[0]["spec"]["template"]["spec"]
    c = next(x for x in pod["containers"] if x["name"] == "kvtierd")
    return secret_at(pod, c, path)


def secret_at(pod, c, path):
    """(secret, key) container `c` of `pod` reads at `path`, or None when
    no Secret volume mounted there holds that file."""
    got = secret_file(pod, c, path)
    return (got["secret"], got["key"]) if got else None


def secret_file(pod, c, path):
    """{secret, key, volume, sub_path} of the Secret file container `c` of
    `pod` reads at `path` (through the deepest mount at or above it; a
    volume's `items` name the files it holds), or None."""
    if not path:
        return None
    mounts = [m for m in c.get("volumeMounts", [])
              if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")]
    if not mounts:
        return None
    m = max(mounts, key=lambda x: len(x["mountPath"]))
    v = next((x for x in pod.get("volumes", []) if x["name"] == m["name"]), {})
    if "secret" not in v:
        return None
    sub_path = m.get("subPath") or m.get("subPathExpr") or ""
    rel = os.path.normpath(os.path.join(sub_path, os.path.relpath(path, m["mountPath"])))
    items = v["secret"].get("items")
    if items is not None:
        key = next((i["key"] for i in items if os.path.normpath(i["path"]) == rel), None)
    else:
        key = rel if "/" not in rel and rel != "." else None
    if key is None:
        return None
    return {"secret": v["secret"]["secretName"], "key": key, "volume": v["name"],
            "sub_path": sub_path}


def nats_server(name, docs):
    """(pod spec, container, path, text) of the nats.conf the nats
    StatefulSet runs with, from its ConfigMap volume; None without one."""
    nats = [d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "nats"]
    if not nats:
        return None
    pod = nats[0]["spec"]["template"]["spec"]
    nc = pod["containers"][0]
    args = nc.get("args", [])
    check("-c" in args, f"{name}: nats runs without its configuration file")
    if "-c" not in args:
        return None
    conf_path = args[args.index("-c") + 1]
    folder, file_name = os.path.split(conf_path)
    conf = None
    for m in nc.get("volumeMounts", []):
        if m["mountPath"] != folder:
            continue
        for v in pod.get("volumes", []):
            if v["name"] == m["name"] and "configMap" in v:
                for d in docs:
                    if d["kind"] == "ConfigMap" and d["metadata"]["name"] == v["configMap"]["name"]:
                        conf = d.get("data", {}).get(file_name)
    check(conf is not None, f"{name}: nats' {conf_path} is not in a mounted ConfigMap")
    if conf is None:
        return None
    return pod, nc, conf_path, conf


# cert_file, key_file, ca_file of every tls block of a nats.conf (a value
# may be quoted).
NATS_TLS_FILE = re.compile(r"""^(\s*(cert_file|key_file|ca_file)\s*[:=]\s*)["']?([^"'\s#]+)["']?""",
                           re.M)


def nats_tls_block(conf):
    """{key: value} of the top-level `tls { }` block of a nats.conf (the
    client port's TLS), or None without one."""
    m = re.search(r"^tls\s*[:=]?\s*\{([^}]*)\}", conf, re.M)
    if not m:
        return None
    return {k: v for k, v in re.findall(r"""^\s*(\w+)\s*[:=]\s*["']?([^"'\s#]+)["']?""",
                                        m.group(1), re.M)}


def throwaway_cert(work):
    """(certificate, key) of a self-signed pair made once under `work`."""
    crt, key = os.path.join(work, "nats-tls.crt"), os.path.join(work, "nats-tls.key")
    if not os.path.exists(crt):
        r = subprocess.run(["openssl", "req", "-x509", "-nodes", "-newkey", "ec",
                            "-pkeyopt", "ec_paramgen_curve:prime256v1", "-days", "1",
                            "-subj", "/CN=nats.kvtier.svc", "-keyout", key, "-out", crt],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            opslib.fail(f"openssl req (a certificate for nats-server -t): {r.stdout}")
    return crt, key


def check_nats_conf(name, server, work):
    """nats-server -t accepts nats.conf, with the container's environment
    (a token from the Secret). It loads the TLS files it names: a throwaway
    self-signed pair stands in for the Secret's for the check only."""
    _, nc, conf_path, conf = server
    nats_server_bin = shutil.which("nats-server") or "/usr/sbin/nats-server"
    if not os.path.exists(nats_server_bin):
        return
    if NATS_TLS_FILE.search(conf):
        if not shutil.which("openssl"):
            print(f"{name}: no openssl for a throwaway certificate: nats-server -t not run")
            return
        crt, key = throwaway_cert(work)
        conf = NATS_TLS_FILE.sub(lambda m: m.group(1) + (key if m.group(2) == "key_file" else crt),
                                 conf)
    path = os.path.join(work, name.replace("/", "-") + "-nats.conf")
    with open(path, "w") as f:
        f.write(conf)
    env = {e["name"]: "token-for-the-config-check" for e in nc.get("env", [])}
    r = subprocess.run([nats_server_bin, "-c", path, "-t"], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, env=dict(os.environ, **env))
    check(r.returncode == 0, f"{name}: nats-server -t on {conf_path}: {r.stdout.strip()}")


def check_nats_tls(name, docs, server, config, index_pod, index_container, index_ca):
    """NATS serves its client port over TLS only, with a certificate from a
    mounted Secret, and kvtierd and kvtier-index check it against the CA of
    that same Secret."""
    pod, nc, conf_path, conf = server
    tls = nats_tls_block(conf)
    check(tls is not None, f"{name}: nats' {conf_path} has no tls block: the NATS token and "
          "every chunk event cross the pod network in clear")
    if tls is None:
        return
    check(not re.search(r"^\s*allow_non_tls\s*[:=]\s*true", conf, re.M),
          f"{name}: nats' {conf_path} sets allow_non_tls: clients may skip TLS (and kvtier's "
          "tls:// clients, libnats 3.4, refuse a server that does not require it)")
    served = {}
    for key in ("cert_file", "key_file"):
        check(tls.get(key), f"{name}: nats' tls block has no {key}")
        served[key] = secret_at(pod, nc, tls.get(key))
        check(not tls.get(key) or served[key],
              f"{name}: nats' tls.{key} {tls.get(key)} is not in a mounted Secret")
    secret = (served.get("cert_file") or (None,))[0]
    kvtierd_ca = config.get("cluster", {}).get("nats_ca_file")
    clients = [("kvtierd's cluster.nats_ca_file", mounted_secret_key(docs, kvtierd_ca))
               if kvtierd_ca else None,
               ("kvtier-index's nats.ca_file (--nats-ca)",
                secret_at(index_pod, index_container, index_ca)) if index_ca else None]
    for who, got in filter(None, clients if secret else []):
        check(got and got[0] == secret,
              f"{name}: {who} is " + (f"{got[0]}/{got[1]}" if got else "in no mounted Secret") +
              f": NATS' certificate is in {secret}, trust its CA")


def check_tokens(name, docs, config, index_container, server, index_key):
    """NATS requires a token, and kvtierd and kvtier-index read the same one;
    kvtierd (when it asks the index) sends the token the index requires:
    `index_key`, the (secret, key) of the index's --api-token-file."""
    _, nc, _, conf = server
    var = re.search(r"authorization\s*\{[^}]*\btoken\s*:\s*\$(\w+)", conf)
    check(var is not None, f"{name}: nats accepts clients without a token")
    nats_key = secret_key(nc, var.group(1)) if var else None
    check(nats_key is not None, f"{name}: nats' token does not come from a Secret")
    cluster = config.get("cluster", {})
    check(mounted_secret_key(docs, cluster.get("nats_token_file")) == nats_key,
          f"{name}: kvtierd's cluster.nats_token_file is not nats' token {nats_key}")
    check(secret_key(index_container, "KVTIER_NATS_TOKEN") == nats_key,
          f"{name}: kvtier-index's KVTIER_NATS_TOKEN is not nats' token {nats_key}")
    shown = "/".join(index_key) if index_key else "a token in no Secret"
    check(index_key is not None and index_key[1] == "index-token",
          f"{name}: kvtier-index's API token (--api-token-file) is {shown}, not the "
          "index-token key that docs/operations.md has operators create and give routers")
    if cluster.get("index_address"):
        sent = mounted_secret_key(docs, cluster.get("index_token_file"))
        check(index_key is not None and sent == index_key,
              f"{name}: kvtierd sends the index " + ("/".join(sent) if sent else "no Secret key")
              + f" (cluster.index_token_file), the index requires {shown} "
              "(--api-token-file): the index refuses every node's lookups")
        check(cluster.get("index_ca_file"),
              f"{name}: kvtierd asks the index without TLS (cluster.index_ca_file)")


def main():
    build, source = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    kubectl = shutil.which("kubectl")
    if not kubectl:
        opslib.skip("no kubectl (Debian's kubernetes-client 1.20 bundles kustomize v2, too old "
                    "for these manifests; install a kubectl >= 1.24)")
    ok, version = kustomize_ok(kubectl)
    if not ok:
        opslib.skip(f"kubectl's kustomize is older than v4.5: {version}")
    kvtierd = os.path.join(build, "src/server/kvtierd")
    work = opslib.temp_dir("k8s")
    k8s = os.path.join(source, "deploy/k8s")
    targets = ["base"] + [os.path.join("overlays", d)
                          for d in sorted(os.listdir(os.path.join(k8s, "overlays")))]
    rendered = {}
    for t in targets:
        r = subprocess.run([kubectl, "kustomize", os.path.join(k8s, t)], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            opslib.fail(f"kubectl kustomize {t}: {r.stderr}")
        docs = [d for d in yaml.safe_load_all(r.stdout) if d]
        rendered[t] = check_overlay(t, docs, kvtierd, work)
        print(f"{t}: {len(docs)} objects")
    # What each overlay is for.
    aks_pod, _ = rendered["overlays/aks"]
    check(aks_pod.get("nodeSelector", {}).get("kubernetes.azure.com/accelerator") == "nvidia",
          "overlays/aks: kvtierd is not pinned to GPU nodes")
    check(aks_pod.get("runtimeClassName") == "nvidia", "overlays/aks: no GPU access")
    rdma_pod, rdma_c = rendered["overlays/aks-rdma"]
    check(rdma_pod.get("hostNetwork") is True, "overlays/aks-rdma: not on the host network")
    check("rdma/hca_shared_devices_a" in rdma_c["resources"]["limits"],
          "overlays/aks-rdma: no RDMA device")
    rdma_docs = [d for d in yaml.safe_load_all(subprocess.run(
        [kubectl, "kustomize", os.path.join(k8s, "overlays/aks-rdma")], stdout=subprocess.PIPE,
        text=True).stdout) if d]
    rdma_cms = [d for d in rdma_docs if d["kind"] == "ConfigMap" and
                d["metadata"]["name"].startswith("kvtierd-config")]
    # Host-network kvtierd calls from node addresses: the policies of the
    # index's API and of NATS must let an ipBlock in.
    for policy, port in (("kvtier-index", "grpc"), ("nats", "client")):
        rules = [r for d in rdma_docs if d["kind"] == "NetworkPolicy" and
                 d["metadata"]["name"] == policy for r in d["spec"].get("ingress", [])]
        check(any(any("ipBlock" in f for f in r.get("from", [])) and
                  any(p.get("port") == port for p in r.get("ports", [])) for r in rules),
              f"overlays/aks-rdma: NetworkPolicy {policy} does not let the nodes reach {port}")
    rdma_config = yaml.safe_load(rdma_cms[0]["data"]["kvtierd.yaml"]) if rdma_cms else {}
    check(rdma_config.get("ucx", {}).get("enabled") is True and
          rdma_config.get("cluster", {}).get("index_address"),
          "overlays/aks-rdma: node-to-node reads (ucx.enabled, cluster.index_address) are off")
    check_rdma_config(k8s)
    base_pod, _ = rendered["base"]
    check(base_pod.get("hostNetwork") is False, "base: kvtierd must not use the host network")
    if errors:
        opslib.fail("\n".join(errors))
    print("PASSED")


if __name__ == "__main__":
    main()
