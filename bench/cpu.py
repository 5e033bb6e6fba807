"""CPU seconds (user + system) from /proc, for bench/ab.

    python3 bench/cpu.py --pid PID                      # one process
    python3 bench/cpu.py --postgres PGDATA/postmaster.pid
        # a Postgres server: the postmaster, its live children, and the children it has reaped
"""
import os
import sys

HZ = os.sysconf("SC_CLK_TCK")


def fields(pid):
    # After the command name in parentheses (which may hold spaces): state, ppid, ...
    return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()


def own(stat):
    return int(stat[11]) + int(stat[12])  # utime, stime


def reaped(stat):
    return int(stat[13]) + int(stat[14])  # cutime, cstime


kind, target = sys.argv[1], sys.argv[2]
if kind == "--pid":
    print(own(fields(target)) / HZ)
else:
    postmaster = open(target).readline().strip()
    stat = fields(postmaster)
    total = own(stat) + reaped(stat)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            child = fields(pid)
        except OSError:
            continue
        if child[1] == postmaster:
            total += own(child)
    print(total / HZ)
