"""The `jaxedit` command: each subcommand parses arguments, calls one library function, prints the result."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence

log = logging.getLogger("jaxedit")


def _load(spec: str):
    from jaxedit.loading import load_model

    start = time.perf_counter()
    model = load_model(spec)
    log.info("loaded %s in %.1f s", spec, time.perf_counter() - start)
    return model


def cmd_info(args: argparse.Namespace) -> int:
    from jaxedit.layout import param_count

    model = _load(args.model)
    c = model.config
    rows = [
        ("source", model.source),
        ("family", c.family),
        ("parameters", f"{param_count(c):,}"),
        ("layers", c.n_layers),
        ("d_model", c.d_model),
        ("heads (q / kv)", f"{c.n_heads} / {c.n_kv_heads}"),
        ("head_dim", c.head_dim),
        ("d_mlp", c.d_mlp),
        ("vocab", c.vocab_size),
        ("context", c.max_positions),
        (
            "positions",
            c.positions if c.positions == "learned" else f"rotary ({c.rotary_style}, {c.rotary_dim} dims)",
        ),
        ("residual", "parallel" if c.parallel_residual else "sequential"),
        ("norm", c.norm),
        ("activation", c.activation + (" (gated)" if c.gated_mlp else "")),
        ("tied embeddings", c.tie_embeddings),
        ("dtype", c.dtype),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from jaxedit.generate import generate_text

    model = _load(args.model)
    (text,) = generate_text(
        model, [args.prompt], max_new_tokens=args.max_new_tokens, top_k=args.top_k, seed=args.seed
    )
    print(args.prompt + text)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from jaxedit.data import demo_facts
    from jaxedit.generate import generate_text
    from jaxedit.predict import next_tokens

    model = _load(args.model)
    facts = demo_facts()
    print(f"Top-5 next tokens of {model.name} ({model.config.family}, {model.config.n_layers} layers):\n")
    for row in next_tokens(model, [f["prompt"] for f in facts], k=5):
        print(row.prompt)
        for token, prob in zip(row.tokens, row.probs, strict=True):
            print(f"    {token!r:<14} {prob:6.3f}")
    prompt = facts[0]["prompt"]
    (text,) = generate_text(model, [prompt], max_new_tokens=args.max_new_tokens)
    print(f"\nGreedy generation:\n    {prompt}{text}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxedit", description="Locate and edit facts in language models (JAX)."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="family, sizes and parameter count of a model")
    info.add_argument("model", help='"smollm2", a Hugging Face model directory or a .gguf file')
    info.set_defaults(func=cmd_info)

    gen = sub.add_parser("generate", help="complete a prompt (greedy, or top-k sampling)")
    gen.add_argument("model")
    gen.add_argument("prompt")
    gen.add_argument("--max-new-tokens", type=int, default=20)
    gen.add_argument("--top-k", type=int, default=None, help="sample from the k most likely tokens")
    gen.add_argument("--seed", type=int, default=0)
    gen.set_defaults(func=cmd_generate)

    demo = sub.add_parser("demo", help="top-5 next tokens for the built-in facts and one generation")
    demo.add_argument("--model", default="smollm2")
    demo.add_argument("--max-new-tokens", type=int, default=20)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"jaxedit: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
