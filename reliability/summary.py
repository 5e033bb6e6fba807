#!/usr/bin/env python3
"""Prints the summary of a reliability run from its results file; exits 1 if anything failed.

Lines of the results file (tab-separated), written by reliability/lib.sh and reliability/suite:
    SCENARIO  figure    NAME        VALUE
    SCENARIO  check     NAME        PASS|FAIL  DETAIL
    SCENARIO  scenario  PASS|FAIL…  SECONDS
"""

import datetime
import os
import sys


def main(path):
    scenarios, figures, checks = {}, {}, {}
    for line in open(path):
        fields = line.rstrip("\n").split("\t")
        name, kind = fields[0], fields[1]
        if kind == "scenario":
            scenarios[name] = (fields[2], float(fields[3]))
        elif kind == "figure":
            figures.setdefault(name, []).append((fields[2], fields[3]))
        elif kind == "check":
            detail = fields[4] if len(fields) > 4 else ""
            checks.setdefault(name, []).append((fields[2], fields[3], detail))

    mode = "quick" if os.environ.get("RELIABILITY_QUICK") == "1" else "full"
    print()
    print(f"dsyncd reliability suite ({mode}), {datetime.date.today()}, {os.cpu_count()} cores")
    print()
    failed = False
    for name, (status, seconds) in scenarios.items():
        passed = sum(1 for c in checks.get(name, []) if c[1] == "PASS")
        total = len(checks.get(name, []))
        print(f"{name:<12} {status:<12} {seconds:>6.1f} s   {passed}/{total} checks")
        for figure, value in figures.get(name, []):
            print(f"    {figure}: {value}")
        for check, result, detail in checks.get(name, []):
            if result != "PASS":
                print(f"    FAILED: {check}{' (' + detail + ')' if detail else ''}")
        if status != "PASS" or any(c[1] != "PASS" for c in checks.get(name, [])):
            failed = True
    total_seconds = sum(seconds for _, seconds in scenarios.values())
    print()
    print(f"{'FAILED' if failed else 'all passed'}: {len(scenarios)} scenarios, "
          f"{sum(len(c) for c in checks.values())} checks, {total_seconds:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
