"""Turns bench/suite's results into the Markdown table of BENCHMARKS.md, with the bars."""
import json
import platform
import subprocess
import sys

rows = [json.loads(line) for line in open(sys.argv[1])]
ingest = [r for r in rows if r["kind"] == "ingest"]
drain = next((r for r in rows if r["kind"] == "drain"), None)
lag = next((r for r in rows if r["kind"] == "lag"), None)
reads = [r for r in rows if r["kind"] == "read"]


def mean(values):
    return sum(values) / len(values)


cpu = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
print(f"Machine: {cpu} cores, {platform.machine()}, {platform.release()}")
print()
if ingest and drain and lag:
    print("| connections | events/s | p50 ms | p99 ms | non-2xx | stored | peak RSS MB | pgbench tps (before, after) | pgbench p50 ms | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    by_connections = {}
    for r in ingest:
        run = r["run"]
        tps = mean(r["pgbench_tps"])
        ratio = run["throughput"] / tps
        by_connections[run["connections"]] = (r, tps, ratio)
        print(
            f"| {run['connections']} | {run['throughput']:.0f} | {run['p50_ms']:.2f} | {run['p99_ms']:.2f} "
            f"| {run['non_2xx'] + run['transport_errors']} | {r['stored']} | {r['rss_mb']} "
            f"| {r['pgbench_tps'][0]:.0f}, {r['pgbench_tps'][1]:.0f} | {mean(r['pgbench_p50_ms']):.3f} | {ratio:.2f} |"
        )
    print()
    drain_rate = drain["events"] / drain["seconds"]
    pg64 = mean(drain["pgbench_tps"])
    print(
        f"Drain: {drain['events']} events ({drain['users']} users) in {drain['seconds']:.2f} s = "
        f"{drain_rate:.0f} events/s, {drain_rate / pg64:.2f} x pgbench at 64 clients "
        f"({drain['pgbench_tps'][0]:.0f}, {drain['pgbench_tps'][1]:.0f} tps before and after the drain); "
        f"peak RSS {drain['rss_mb']} MB"
    )
    run = lag["run"]
    print(
        f"Lag at {run['requests'] / run['seconds']:.0f} events/s offered to --role all: "
        f"p50 {run['lag_p50_ms']:.1f} ms, p99 {run['lag_p99_ms']:.1f} ms "
        f"({run['applied']} of {run['ok']} seen applied); peak RSS {lag['rss_mb']} MB"
    )
    print()

    r64, tps64, ratio64 = by_connections[64]
    r1, _, _ = by_connections[1]
    bars = [
        ("ingest at 64: >= 2.4 x pgbench", ratio64 >= 2.4, f"{ratio64:.2f} x"),
        ("ingest at 64: p99 <= 10 ms", r64["run"]["p99_ms"] <= 10, f"{r64['run']['p99_ms']:.2f} ms"),
        ("ingest at 64: no non-2xx", r64["run"]["non_2xx"] + r64["run"]["transport_errors"] == 0, str(r64["run"]["non_2xx"])),
        (
            "ingest at 1: p50 <= pgbench p50 + 0.25 ms",
            r1["run"]["p50_ms"] <= mean(r1["pgbench_p50_ms"]) + 0.25,
            f"{r1['run']['p50_ms']:.3f} vs {mean(r1['pgbench_p50_ms']):.3f} ms",
        ),
        ("drain: >= 2.4 x pgbench", drain_rate / pg64 >= 2.4, f"{drain_rate / pg64:.2f} x"),
        ("lag p99 <= 50 ms", run["lag_p99_ms"] <= 50, f"{run['lag_p99_ms']:.1f} ms"),
        (
            "peak RSS <= 32 MB",
            max([r["rss_mb"] for r in ingest] + [drain["rss_mb"], lag["rss_mb"]]) <= 32,
            f"{max([r['rss_mb'] for r in ingest] + [drain['rss_mb'], lag['rss_mb']])} MB",
        ),
    ]
    print("| bar | holds | measured |")
    print("|---|---|---|")
    for name, holds, measured in bars:
        print(f"| {name} | {'yes' if holds else 'NO'} | {measured} |")


# ---- The read API (BENCH_PHASES=read) ----
if reads:
    names = {"list": "GET /directory_users?directory=…&limit=100", "get": "GET /directory_users/{id}"}
    bars_at = {"list": 0.6, "get": 0.7}
    print("| read API at 64 connections | requests/s | p50 ms | p99 ms | non-2xx | peak RSS MB | pgbench tps of the same SELECT (before, after) | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    read_bars = []
    for r in reads:
        run = r["run"]
        tps = mean(r["pgbench_tps"])
        ratio = run["throughput"] / tps
        failures = run["non_2xx"] + run["transport_errors"]
        print(
            f"| {names[r['name']]} | {run['throughput']:.0f} | {run['p50_ms']:.2f} | {run['p99_ms']:.2f} "
            f"| {failures} | {r['rss_mb']} | {r['pgbench_tps'][0]:.0f}, {r['pgbench_tps'][1]:.0f} | {ratio:.2f} |"
        )
        bar = bars_at[r["name"]]
        read_bars += [
            (f"{r['name']}: >= {bar} x pgbench", ratio >= bar, f"{ratio:.2f} x"),
            (f"{r['name']}: p99 <= 10 ms", run["p99_ms"] <= 10, f"{run['p99_ms']:.2f} ms"),
            (f"{r['name']}: no non-2xx", failures == 0, str(failures)),
        ]
    print()
    print("| bar | holds | measured |")
    print("|---|---|---|")
    for name, holds, measured in read_bars:
        print(f"| {name} | {'yes' if holds else 'NO'} | {measured} |")
