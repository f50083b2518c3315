"""What a new input shape costs after a first call: a second trace of a prompt of another length, and a
second ROME edit of another request, each against its own warm repeat, in one process (issue 35).

New shapes should fall into compiled buckets (or compile in a fraction of the run), so the second call
costs at most ~1.3x its warm repeat. Model loading, statistics and contexts are outside the timings. Last, the alternative to a new loop:
the second request's edit with its suffix window padded to 8 tokens (the first request's), warm.

    python tools/bench_new_shapes.py [--stats-texts 100] [--only trace|rome]
"""

from __future__ import annotations

import argparse
import time

from bench_report import cold_start, cpu_name

import jaxedit
from jaxedit.edit import RomeHparams, default_layer, key_statistics, rome, targets
from jaxedit.edit.contexts import context_templates
from jaxedit.edit.requests import Request
from jaxedit.edit.stats import model_samples
from jaxedit.runtime.compile_log import compile_log
from jaxedit.trace import trace

PROMPTS = (
    ("The Eiffel Tower is located in the city of", "The Eiffel Tower"),
    ("The Colosseum, a famous amphitheatre, is located in the city of", "The Colosseum"),
)
REQUESTS = (
    Request(prompt="{} is located in the city of", subject="The Eiffel Tower", target="Rome"),
    Request(prompt="The mother tongue of {} is", subject="Danielle Darrieux", target="English"),
)


def timed(fn) -> tuple[float, int, float]:
    """Wall seconds of `fn()`, the programs it compiled and their compile seconds (summed)."""
    with compile_log() as log:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start, log.programs, log.seconds


def first_then_new_shape(name: str, call, second_name: str) -> None:
    """Time `call(0)`, then `call(1)` (a new shape) and its warm repeat; print them and the ratio."""
    first, p1, c1 = timed(lambda: call(0))
    second, p2, c2 = timed(lambda: call(1))
    warm, _, _ = timed(lambda: call(1))
    print(f"{name}: first {first:.1f} s ({p1} programs, {c1:.1f} s compiling), {second_name} {second:.1f} s "
          f"({p2} programs, {c2:.1f} s compiling), its warm repeat {warm:.1f} s")  # fmt: skip
    print(f"RATIO new_shape {name} {second / warm:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stats-texts", type=int, default=100)
    parser.add_argument("--only", choices=("trace", "rome"), help="run one of the two parts")
    args = parser.parse_args()
    cold_start()
    model = jaxedit.load_model("smollm2")
    print(f"cpu: {cpu_name()}; SmolLM2-135M (float32)")
    for prompt, _ in PROMPTS:
        print(f"prompt of {len(jaxedit.core.tokens.encode_one(model.tokenizer, prompt))} tokens: {prompt!r}")

    if args.only != "rome":
        first_then_new_shape(
            "trace", lambda i: trace(model, PROMPTS[i][0], subject=PROMPTS[i][1]), "second prompt"
        )
    if args.only == "trace":
        return

    layer = default_layer(model)
    stats = key_statistics(
        model, [layer], model_samples(model, args.stats_texts), cache=False, progress=False
    )
    templates = context_templates(model)
    hp = RomeHparams(layer=layer)

    def edited(i: int):
        return rome(model, REQUESTS[i], stats[layer], hp, templates=templates)

    first_then_new_shape("rome", edited, "second request")

    # the alternative: windows padded to at least 8 tokens, so both requests share one loop
    exact = targets.suffix_window
    targets.suffix_window = lambda batch, rows=slice(None), multiple=4: max(8, exact(batch, rows, multiple))
    edited(1)
    padded, _, _ = timed(lambda: edited(1))
    targets.suffix_window = exact
    print(f"rome: second request with its suffix window padded to 8 tokens: warm {padded:.1f} s")


if __name__ == "__main__":
    main()
