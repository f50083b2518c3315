"""Start a multi-process jaxedit run on this machine: N processes of one script, on localhost.

Each process gets `--coordinator localhost:PORT --num-processes N --process-id I` appended to the given
arguments (the script passes them to `jaxedit.scale.distributed.initialize`, with `--cpu-devices K` for
simulated CPU devices). Output lines are prefixed with the process id; the launcher exits non-zero if
any process does. On a GPU or TPU cluster the same script runs once per host with the coordinator's
address instead (see docs/scale.md).

    python tools/launch_local.py --processes 2 tools/multiprocess_check.py --cpu-devices 4 MODEL_DIR
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import threading


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("script")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.processes < 1:
        raise SystemExit("--processes must be at least 1")
    address = f"localhost:{free_port()}"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                args.script,
                *args.args,
                "--coordinator",
                address,
                "--num-processes",
                str(args.processes),
                "--process-id",
                str(i),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(args.processes)
    ]

    def relay(i: int, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            if not line.startswith("[Gloo]"):
                print(f"[{i}] {line}", end="", flush=True)

    threads = [threading.Thread(target=relay, args=(i, p)) for i, p in enumerate(procs)]
    for t in threads:
        t.start()
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=args.timeout))
        except subprocess.TimeoutExpired:
            p.kill()
            codes.append(-9)
    for t in threads:
        t.join()
    print(f"exit codes: {codes}")
    return 0 if all(c == 0 for c in codes) else 1


if __name__ == "__main__":
    sys.exit(main())
