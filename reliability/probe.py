#!/usr/bin/env python3
"""Watches a running dsyncd from outside, for reliability/outage.

    probe.py watch --base http://127.0.0.1:PORT --secret S --prefix P --out FILE --stop-file F
    probe.py report --probe FILE --marks FILE --acknowledged FILE

`watch` runs until the stop file exists (or --max-secs pass): it polls GET /readyz every
--ready-interval and posts a signed, unique dsync.user.created delivery every
--deliver-interval, each request on its own connection and thread, whatever became of the earlier
ones, and never retries, so that every answer the service gives is seen as given. Each answer is
a line of FILE:

    ready   SENT ANSWERED STATUS
    deliver SENT ANSWERED STATUS EVENT_ID

(times in seconds since the epoch; STATUS 0 for a transport error or no answer in time).

`report` reads those lines and the outage marks (`stop_begin`, `stop_done`, `start_begin`,
`start_done`, one `NAME TIME` a line) and prints a JSON summary: what was answered during the
outage, the /readyz transitions and how long recovery took; the event ids answered 2xx go to
the --acknowledged file.
"""

import argparse
import hashlib
import hmac
import http.client
import json
import os
import sys
import threading
import time

SAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "samples",
                      "dsync.user.created.json")


def sign(secret, body):
    timestamp = str(int(time.time() * 1000))
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"t={timestamp}, v1={mac.hexdigest()}"


def request(host, port, method, path, body=None, headers=None, timeout=5.0):
    """The status of one request on a fresh connection, or 0."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return 0
    finally:
        connection.close()


def watch(args):
    base = args.base.removeprefix("http://")
    host, port = base.split(":")
    port = int(port)
    template = json.load(open(SAMPLE))
    out = open(args.out, "a", buffering=1)
    lock = threading.Lock()
    deadline = time.time() + args.max_secs

    def running():
        return not os.path.exists(args.stop_file) and time.time() < deadline

    def write(line):
        with lock:
            out.write(line + "\n")

    # Each request runs in a thread of its own, started on schedule whatever the answers to the
    # earlier ones: one request that waits through the outage must not hide the others.
    in_flight = threading.BoundedSemaphore(200)

    def launch(target, *arguments):
        in_flight.acquire()

        def run():
            try:
                target(*arguments)
            finally:
                in_flight.release()

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    def poll_ready():
        sent = time.time()
        status = request(host, port, "GET", "/readyz", timeout=args.timeout)
        write(f"ready {sent:.3f} {time.time():.3f} {status}")

    def deliver(number):
        event_id = f"event_{args.prefix}_{number:08}"
        body = dict(template)
        body["id"] = event_id
        body["data"] = dict(template["data"], id=f"directory_user_{args.prefix}_{number:08}",
                            email=f"probe{number}@example.com")
        raw = json.dumps(body).encode()
        headers = {"content-type": "application/json", "WorkOS-Signature": sign(args.secret, raw)}
        sent = time.time()
        status = request(host, port, "POST", "/webhooks/workos", raw, headers, timeout=args.timeout)
        write(f"deliver {sent:.3f} {time.time():.3f} {status} {event_id}")

    threads, number = [], 0
    next_ready = next_delivery = time.time()
    while running():
        now = time.time()
        if now >= next_ready:
            threads.append(launch(poll_ready))
            next_ready += args.ready_interval
        if now >= next_delivery:
            threads.append(launch(deliver, number))
            number += 1
            next_delivery += args.deliver_interval
        time.sleep(max(0.0, min(next_ready, next_delivery) - time.time()))
    for thread in threads:
        thread.join()


def report(args):
    marks = {}
    for line in open(args.marks):
        name, at = line.split()
        marks[name] = float(at)
    ready, delivered = [], []
    for line in open(args.probe):
        fields = line.split()
        if fields[0] == "ready":
            ready.append((float(fields[1]), float(fields[2]), int(fields[3])))
        elif fields[0] == "deliver":
            delivered.append((float(fields[1]), float(fields[2]), int(fields[3]), fields[4]))

    down, up = marks["stop_done"], marks["start_begin"]
    # Sent after Postgres was down and answered before it was started again.
    during = [d for d in delivered if d[0] >= down and d[1] <= up]
    statuses = {}
    for d in during:
        statuses[str(d[2])] = statuses.get(str(d[2]), 0) + 1
    ready_during = [r for r in ready if r[0] >= down and r[1] <= up]

    ready.sort()
    delivered.sort(key=lambda d: d[1])
    # By the time the poll was sent, from the moment Postgres was told to stop (polls overlap: one
    # sent during the outage may be answered after it).
    transitions, previous = [], None
    for sent, answered, status in ready:
        if status != previous:
            if previous is not None:
                transitions.append(f"{previous}->{status} at {sent - marks['stop_begin']:+.2f}s")
            previous = status
    after = sorted((r[1], r) for r in ready if r[0] >= marks["start_done"] and r[2] == 200)
    after = [r for _, r in after]
    delivered_after = [d for d in delivered if d[0] >= marks["start_done"] and 200 <= d[2] < 300]
    # Sent while Postgres was down or going down: how long the service took to answer.
    waited = [d[1] - d[0] for d in delivered if marks["stop_begin"] <= d[0] <= up]
    summary = {
        "outage_secs": round(marks["start_done"] - marks["stop_begin"], 2),
        "down_secs": round(up - down, 2),
        "probe_deliveries": len(delivered),
        "during_outage": statuses,
        "during_outage_2xx": sum(n for s, n in statuses.items() if s.startswith("2")),
        "ready_polls_during_outage": len(ready_during),
        "ready_503_during_outage": sum(1 for r in ready_during if r[2] == 503),
        "ready_200_during_outage": sum(1 for r in ready_during if r[2] == 200),
        "longest_answer_secs_in_outage": round(max(waited), 2) if waited else None,
        "unanswered": sum(1 for d in delivered if d[2] == 0) + sum(1 for r in ready if r[2] == 0),
        "ready_final": ready[-1][2] if ready else None,
        "ready_transitions": transitions,
        "ready_again_after_secs": round(after[0][1] - marks["start_done"], 2) if after else None,
        "accepting_again_after_secs":
            round(delivered_after[0][1] - marks["start_done"], 2) if delivered_after else None,
    }
    json.dump(summary, sys.stdout)
    print()
    with open(args.acknowledged, "w") as out:
        for d in delivered:
            if 200 <= d[2] < 300:
                out.write(d[3] + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    w = commands.add_parser("watch")
    w.add_argument("--base", required=True)
    w.add_argument("--secret", required=True)
    w.add_argument("--prefix", required=True)
    w.add_argument("--out", required=True)
    w.add_argument("--stop-file", required=True)
    w.add_argument("--max-secs", type=float, default=300)
    w.add_argument("--ready-interval", type=float, default=0.1)
    w.add_argument("--deliver-interval", type=float, default=0.05)
    w.add_argument("--timeout", type=float, default=10.0,
                   help="a request unanswered this long counts as status 0")
    r = commands.add_parser("report")
    r.add_argument("--probe", required=True)
    r.add_argument("--marks", required=True)
    r.add_argument("--acknowledged", required=True,
                   help="where to write the event ids answered 2xx")
    args = parser.parse_args()
    {"watch": watch, "report": report}[args.command](args)


if __name__ == "__main__":
    main()
