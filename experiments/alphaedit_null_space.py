"""AlphaEdit's null space on SmolLM2 (Fang et al., 2025, §3.2): at each of its critical layers, how many
of the key dimensions the eigenvalue threshold keeps for editing (eigenvalues of the key second moment
`E[k kᵀ]` over Wikipedia articles below the threshold). Writes experiments/results/alphaedit_null_space.md.

    python experiments/alphaedit_null_space.py [--stats-samples 1000]
"""

from __future__ import annotations

import common
import numpy as np

from jaxedit.edit.alphaedit import default_hparams, null_space_projector

THRESHOLDS = (1e-4, 1e-3, 1e-2, 1e-1)


def main() -> None:
    parser = common.experiment_parser(__doc__, stats_samples=1000)
    args = parser.parse_args()
    _, model = common.begin(args)
    hp = default_hparams(model)
    stats = common.wikipedia_statistics(model, hp.layers, args.stats_samples)
    lines = [
        f"# AlphaEdit's null space on {common.model_label()} ({model.config.d_mlp} key dimensions)",
        "",
        f"Command: `python experiments/alphaedit_null_space.py --stats-samples {args.stats_samples}`; CPU "
        f"{common.cpu_model()}. Dimensions kept for editing (eigenvalues of E[k kᵀ] below the threshold) at "
        f"AlphaEdit's layers; the packaged threshold is {hp.threshold}.",
        "",
        "| layer | tokens | largest eigenvalue | median | "
        + " | ".join(f"< {t:g}" for t in THRESHOLDS)
        + " |",
        "|---" * (4 + len(THRESHOLDS)) + "|",
    ]
    for layer in hp.layers:
        values = np.linalg.eigvalsh(stats[layer].matrix.astype(np.float64))
        ranks = [null_space_projector(stats[layer].matrix, t).rank for t in THRESHOLDS]
        lines.append(
            f"| {layer} | {stats[layer].tokens} | {values.max():.3g} | {np.median(values):.3g} | "
            + " | ".join(str(r) for r in ranks)
            + " |"
        )
    common.write_text(common.RESULTS / "alphaedit_null_space.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
