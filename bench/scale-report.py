"""Turns bench/scale's results (JSON lines) into the Markdown tables of BENCHMARKS.md, one
column per binary, with the bars."""
import json
import platform
import subprocess
import sys
from collections import defaultdict

rows = [json.loads(line) for line in open(sys.argv[1])]
binaries = list(dict.fromkeys(r["binary"] for r in rows))
by = defaultdict(list)
for r in rows:
    by[(r["binary"], r["kind"])].append(r)


def mean(values):
    return sum(values) / len(values) if values else float("nan")


def p99(lags, start=None, end=None):
    """p99 of the lags (ms) of deliveries answered in [start, end] (Unix s); unseen = inf."""
    chosen = [
        (lag if lag >= 0 else float("inf"))
        for at, lag in lags
        if (start is None or at / 1000 >= start) and (end is None or at / 1000 <= end)
    ]
    if not chosen:
        return float("nan"), 0
    chosen.sort()
    rank = max(1, -(-99 * len(chosen) // 100))
    return chosen[rank - 1], len(chosen)


def fmt(value, digits=0):
    if value != value:
        return "n/a"
    if value == float("inf"):
        return "never"
    return f"{value:,.{digits}f}"


table = []  # (what, bar, {binary: (text, holds)})


def add(what, bar, values):
    table.append((what, bar, values))


raw = defaultdict(dict)
for b in binaries:
    drains = by[(b, "drain")]
    # From the first batch's finish to the last's (results before 2026-12-01 15:50 UTC: from
    # the worker's start).
    rate = lambda d: d["events"] / (d["finished"] - d.get("first_finished", d.get("started", 0))) \
        if "finished" in d else d["events"] / d["seconds"]
    small = [rate(d) for d in drains if d["events"] == 100000]
    large = [rate(d) for d in drains if d["events"] == 1000000]
    if small and large:
        ratio = mean(large) / mean(small)
        raw[b]["drain"] = (
            f"{fmt(mean(large))}/s vs {fmt(mean(small))}/s ({', '.join(fmt(s) for s in small)}) = {ratio:.2f}",
            ratio >= 0.8,
        )
    ingests = by[(b, "ingest")]
    empty = [i["run"]["throughput"] for i in ingests if i["inbox"] == "empty"]
    full = [i for i in ingests if i["inbox"] == "full"]
    if empty and full:
        rates = [f["run"]["throughput"] for f in full]
        ratio = mean(rates) / mean(empty)
        swept = "/".join(f"{f['swept']:,}" for f in full)
        p99s = "/".join(f"{i['run']['p99_ms']:.1f}" for i in ingests)
        raw[b]["ingest"] = (
            f"{fmt(mean(rates))}/s ({', '.join(fmt(r) for r in rates)}) vs "
            f"{fmt(mean(empty))}/s ({', '.join(fmt(e) for e in empty)}) = {ratio:.2f} "
            f"({swept} swept meanwhile; p99 {p99s} ms)",
            ratio >= 0.8,
        )
    # Every round of a deletion scenario (BENCH_SCALE_SCENARIOS may name one more than once),
    # in the order run; a bar holds when it holds in each.
    deletions = defaultdict(list)
    for d in by[(b, "deletion")]:
        # The bars are for a directory of 100,000 users; a larger one is measured without.
        key = "deletion" if d.get("users", 100000) == 100000 else f"deletion_{d['users']}"
        if d.get("target", "directory") == "group":
            key = f"group_deletion_{d['users']}"
        deletions[key].append(d)
    for key, rounds in deletions.items():
        barred = key == "deletion"
        times, others = [], []
        for d in rounds:
            seconds = d["done"] - d["answered"] if d["done"] > 0 else float("inf")
            times.append((f"{fmt(seconds, 2)} s ({d['live_after']} live after)", seconds <= 5))
            end = d["done"] if d["done"] > 0 else None
            during, n = p99(d["lags"], d["answered"], end)
            overall, total = p99(d["lags"])
            others.append((
                f"{fmt(during, 1)} ms over the {n} answered during it ({fmt(overall, 1)} ms over all "
                f"{total}; {d['other'].get('non_2xx', 0)} non-2xx)",
                during <= 1000,
            ))
        for suffix, measured in (("", times), ("_other", others)):
            raw[b][key + suffix] = (
                "; ".join(text for text, _ in measured),
                all(holds for _, holds in measured) if barred else None,
            )
    for snap in by[(b, "snapshot")]:
        drift = " ".join(snap["drift"].split("\n")[-2:]).strip()
        raw[b][f"snapshot_{snap['users']}_{snap['pass']}"] = (
            f"{fmt(snap['seconds'], 1)} s; CPU Postgres {fmt(snap['postgres_cpu'], 1)} s, "
            f"dsyncd {fmt(snap['dsyncd_cpu'], 1)} s; {snap['rss_mb']['reconcile']} MB; "
            f"{snap['live']:,} rows live after ({drift})",
            None,
        )
    fair = by[(b, "fairness")]
    alone = [f for f in fair if f["mode"] == "alone"]
    shared = [f for f in fair if f["mode"] == "shared"]
    if alone and shared:
        rate = lambda f: f["run"]["ok"] / (f["finished"] - f["started"])
        ratio = mean([rate(f) for f in shared]) / mean([rate(f) for f in alone])
        rates = lambda runs: " and ".join(fmt(rate(f)) for f in runs)
        ingests = lambda runs: "/".join(fmt(f["run"]["throughput"]) for f in runs)
        raw[b]["fair_a"] = (
            f"{fmt(mean([rate(f) for f in shared]))}/s ({rates(shared)}) vs "
            f"{fmt(mean([rate(f) for f in alone]))}/s ({rates(alone)}) alone = {ratio:.2f}; "
            f"A's ingest {ingests(shared)} vs {ingests(alone)}/s",
            ratio >= 0.8,
        )
        # The worst round's p99: each round is a sync of its own.
        rounds = [(p99(s["lags"], s["started"], s["finished"]), p99(s["lags"])) for s in shared]
        (during, n), (overall, total) = max(rounds, key=lambda r: r[0][0])
        raw[b]["fair_b"] = (
            f"{fmt(during, 1)} ms over the {n} answered during A's sync, the worst of "
            f"{len(rounds)} ({', '.join(fmt(r[0][0], 1) for r in rounds)} ms; "
            f"{fmt(overall, 1)} ms over all {total})",
            during <= 1000,
        )
    peaks = defaultdict(float)
    for r in rows:
        if r["binary"] == b:
            for role, mb in r.get("rss_mb", {}).items():
                peaks[role] = max(peaks[role], mb)
    if peaks:
        raw[b]["rss"] = (
            ", ".join(f"{role} {mb} MB" for role, mb in sorted(peaks.items())),
            max(peaks.values()) <= 32,
        )

bars = [
    ("drain", "drain from 1,000,000 stored events >= 0.8 x from 100,000"),
    ("ingest", "ingest at 64 into 1,000,000 finished rows >= 0.8 x into an empty inbox"),
    ("deletion", "dsync.deleted of 100k users/1k groups/300k memberships: 200 to all deleted <= 5 s"),
    ("deletion_other", "meanwhile, another directory at 50/s: 200-to-applied p99 <= 1 s"),
    ("deletion_1000000", "measured, no bar: dsync.deleted of 1M users/10k groups/3M memberships, 200 to all deleted"),
    ("deletion_1000000_other", "measured, no bar: meanwhile, another directory at 50/s: 200-to-applied p99"),
    ("group_deletion_1000000", "measured, no bar: dsync.group.deleted of a group of all 1M users of a directory, 200 to all its memberships deleted"),
    ("group_deletion_1000000_other", "measured, no bar: meanwhile, another directory at 50/s: 200-to-applied p99"),
    ("snapshot_100000_empty", "measured, no bar: snapshot reconciliation of 100k users/1k groups/300k memberships into empty tables"),
    ("snapshot_100000_synced", "measured, no bar: the same snapshot again, nothing to repair"),
    ("snapshot_1000000_empty", "measured, no bar: snapshot reconciliation of 1M users/10k groups/3M memberships into empty tables"),
    ("snapshot_1000000_synced", "measured, no bar: the same snapshot again, nothing to repair"),
    ("fair_a", "A's first sync of 200,000 with B at 20/s: A's drain >= 0.8 x alone"),
    ("fair_b", "B's 200-to-applied p99 during A's sync <= 1 s"),
    ("rss", "peak RSS of each role <= 32 MB"),
]
cpu = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
print(f"Machine: {cpu} cores, {platform.machine()}, {platform.release()}")
print()
print("| bar | " + " | ".join(binaries) + " |")
print("|---|" + "---|" * len(binaries))
for key, name in bars:
    if key.startswith(("deletion_1000000", "group_deletion_", "snapshot_")) and not any(key in raw[b] for b in binaries):
        continue  # a scenario outside the default list
    cells = []
    for b in binaries:
        if key in raw[b]:
            text, holds = raw[b][key]
            verdict = "measured" if holds is None else "yes" if holds else "NO"
            cells.append(f"{verdict}: {text}")
        else:
            cells.append("not run")
    print(f"| {name} | " + " | ".join(cells) + " |")
