"""The PyTorch side of the benchmarks: `transformers` opening the same GGUF file jaxedit loads."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

from jaxedit.io.loading import embedded_gguf_path


def reference_model(path: str | Path | None = None) -> transformers.PreTrainedModel:
    """The `transformers` model of a GGUF file (default: the packaged SmolLM2-135M-Instruct), float32, in
    eval mode with its weights frozen (as the reference codes set them: only their own deltas train)."""
    path = Path(path) if path is not None else embedded_gguf_path()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    return model.eval().requires_grad_(False)
