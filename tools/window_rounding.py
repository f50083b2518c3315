"""What rounding target optimisation's suffix windows costs and saves (`Execution.window_multiple`).

Each invocation forces one rounding for the whole process (the library chooses it per backend in
`Execution.resolved`: 1 on a CPU, 4 on accelerators) and runs either the 200 PMET target optimisations of
`tools/bench_mass.py` (3 steps, cold then warm, compiles counted) or a `jaxedit` command line:

    python tools/window_rounding.py --multiple 4 targets [--n 200]
    python tools/window_rounding.py --multiple 4 cli --compile-cache off eval smollm2 --method rome --n 30 ...

Run each rounding in a fresh process with the compile cache off (`JAXEDIT_COMPILE_CACHE=off`) to compare
cold figures (experiments/results/bench_mass_cpu.log and eval_time_cpu.log hold the runs).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from jaxedit.runtime import execution

DATA = Path(__file__).resolve().parents[1].parent / "shared/data/counterfact_easyedit/counterfact-edit.json"


def force_multiple(multiple: int) -> None:
    """Every `Execution.resolved()` of this process rounds windows to `multiple`."""
    resolved = execution.Execution.resolved

    def forced(self, backend=None):
        return dataclasses.replace(resolved(self, backend), window_multiple=multiple)

    execution.Execution.resolved = forced


def targets(n: int, multiple: int) -> None:
    import jaxedit
    from jaxedit.edit import targets as target_lib
    from jaxedit.edit.contexts import context_templates
    from jaxedit.edit.registry import method_hparams
    from jaxedit.evaluate import read_counterfact
    from jaxedit.runtime.compile_log import compile_log

    model = jaxedit.load_model("smollm2")
    hp = method_hparams("pmet", model)
    templates = context_templates(model, hp.prefixes, seed=hp.seed)
    requests = [c.request for c in read_counterfact(DATA)[:n]]
    settings = dataclasses.replace(
        hp.targets, steps=3, loss_stop=-1.0, kl_stop=-1.0
    )  # as bench_mass --steps 3
    quiet = execution.Execution(progress=False)
    for label in ("cold", "warm"):
        with compile_log() as log:
            start = time.perf_counter()
            target_lib.optimise_targets(model, requests, max(hp.layers), templates, settings, execution=quiet)
            seconds = time.perf_counter() - start
        print(f"multiple {multiple}: {n} PMET targets {label} {seconds:.1f} s; {log.summary()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--multiple", type=int, required=True, help="suffix windows rounded to multiples of this"
    )
    sub = parser.add_subparsers(dest="mode", required=True)
    sub.add_parser("targets").add_argument("--n", type=int, default=200)
    sub.add_parser("cli").add_argument("argv", nargs=argparse.REMAINDER, help="a jaxedit command line")
    args = parser.parse_args()
    force_multiple(args.multiple)
    if args.mode == "targets":
        targets(args.n, args.multiple)
        return
    from jaxedit.cli import main as jaxedit_main

    sys.exit(jaxedit_main(args.argv))


if __name__ == "__main__":
    main()
