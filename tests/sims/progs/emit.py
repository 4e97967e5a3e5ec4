#!/usr/bin/env python3
"""A scriptable program for the sim tests: each argument is one action, in order.

    out:TEXT     print TEXT on stdout            err:TEXT    print TEXT on stderr
    env:NAME     print NAME=<its value> on stdout
    sleep:SECS   sleep                           exit:CODE   exit with CODE
    json:TEXT    print TEXT (a JSON document, possibly several lines) on stdout
"""

import os
import sys
import time

for arg in sys.argv[1:]:
    verb, _, rest = arg.partition(":")
    if verb == "out" or verb == "json":
        print(rest, flush=True)
    elif verb == "err":
        print(rest, file=sys.stderr, flush=True)
    elif verb == "env":
        print(f"{rest}={os.environ.get(rest, '')}", flush=True)
    elif verb == "sleep":
        time.sleep(float(rest))
    elif verb == "exit":
        sys.exit(int(rest))
    else:
        sys.exit(f"emit.py: unknown action {arg!r}")
