"""Reads the Grafana dashboard: its panels and their PromQL queries."""
import json
import re

METRIC = re.compile(r"\b(kvtier_[a-zA-Z0-9_]+|up)\b(?!\s*\()")


def load(path):
    with open(path) as f:
        return json.load(f)


def panels(dash):
    """Every panel, rows' nested panels included."""
    for p in dash["panels"]:
        yield p
        for q in p.get("panels", []):
            yield q


def queries(dash):
    """(panel title, expr) for every query."""
    for p in panels(dash):
        for t in p.get("targets", []):
            yield p["title"], t["expr"]


def metric_names(expr):
    """kvtier metric names (and `up`) an expression reads; label names inside
    braces and by/without clauses are not metric names and are skipped."""
    stripped = re.sub(r"\{[^}]*\}", "", expr)
    stripped = re.sub(r"\b(by|without)\s*\([^)]*\)", "", stripped)
    return set(METRIC.findall(stripped))


def concrete(expr, rate_interval="1m"):
    """The expression with the dashboard's variables filled in."""
    return (expr.replace("$__rate_interval", rate_interval).replace("$instance", ".*")
            .replace("$tokens_per_gpu_second", "10000"))
