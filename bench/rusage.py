"""Runs a command and writes its user and system CPU seconds and peak RSS (KB) to a file:

    python3 bench/rusage.py OUT COMMAND [ARG...]

What GNU time's `-f "%U %S %M"` gives, without needing the `time` package. Exits with the
command's status; its output passes through.
"""
import resource
import subprocess
import sys

status = subprocess.run(sys.argv[2:]).returncode
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(sys.argv[1], "w") as out:
    # ru_maxrss is in KB on Linux.
    out.write(f"{usage.ru_utime:.2f} {usage.ru_stime:.2f} {usage.ru_maxrss}\n")
sys.exit(status)
