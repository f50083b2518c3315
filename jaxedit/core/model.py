"""`Model`: a loaded model as a value (config, params, tokenizer, its edits), the handle every layer
above the decoder passes around. Loading lives in `jaxedit.io.loading`, which re-exports it."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

from jaxedit.core.config import ModelConfig
from jaxedit.core.fingerprint import weights_fingerprint
from jaxedit.core.layout import Params
from jaxedit.display import Rendered, html_table


@dataclasses.dataclass(frozen=True)
class Model(Rendered):
    """A loaded model: config, params pytree, tokenizer (or None) and where it came from.

    A value: editing functions return a new `Model` (`dataclasses.replace(model, params=...)`) and
    never change this one. An edited model also holds the unedited params (`base`, shared, not copied)
    and the weight deltas applied to them in order (`edits`, see `jaxedit.edit.delta`), so any edit can
    be withdrawn exactly.
    """

    config: ModelConfig
    params: Params
    tokenizer: Any = None
    source: str = ""
    base: Params | None = None
    edits: tuple = ()
    # the fingerprint of `base`, carried from the unedited model by `jaxedit.edit.apply`
    base_digest: str | None = dataclasses.field(default=None, repr=False, compare=False)

    def replace(self, **changes: Any) -> Model:
        return dataclasses.replace(self, **changes)

    @functools.cached_property
    def fingerprint(self) -> str:
        """Fingerprint of every weight in `params` (`jaxedit.core.fingerprint`): an edited model, a
        re-saved copy and another seed all differ. Computed once per model value."""
        return weights_fingerprint(self.config, self.params)

    @property
    def base_fingerprint(self) -> str:
        """Fingerprint of the unedited weights (`base`, or `params` when there are no edits)."""
        if self.base is None:
            return self.fingerprint
        if self.base_digest is None:
            return weights_fingerprint(self.config, self.base)
        return self.base_digest

    def unedited(self) -> Model:
        """The model without its edits (its fingerprint known, not recomputed)."""
        if self.base is None:
            return self
        unedited = self.replace(params=self.base, base=None, edits=(), base_digest=None)
        unedited.__dict__["fingerprint"] = self.base_fingerprint  # seeds the cached property
        return unedited

    @property
    def name(self) -> str:
        return Path(self.source).name or self.source

    def _display_fields(self) -> list[tuple[str, str | None, Any]]:
        """Treescope's fields (`treescope.render_to_text(model)`): family, sizes, fingerprint, edits and
        the params pytree."""
        c = self.config
        return [
            ("name", ".name", self.name), ("family", ".config.family", c.family),
            ("layers", ".config.n_layers", c.n_layers), ("width", ".config.d_model", c.d_model),
            ("mlp_width", ".config.d_mlp", c.d_mlp), ("heads", ".config.n_heads", c.n_heads),
            ("vocab", ".config.vocab_size", c.vocab_size), ("dtype", ".config.dtype", c.dtype),
            ("fingerprint", ".fingerprint", self.fingerprint), ("edits", ".edits", self.edits),
            ("source", ".source", self.source), ("params", ".params", self.params),
        ]  # fmt: skip

    def _html_table(self) -> str:
        """A one-row table of what the model is."""
        c = self.config
        header = ("family", "layers", "width", "mlp width", "heads", "vocab", "dtype", "fingerprint", "edits")
        row = (c.family, c.n_layers, c.d_model, c.d_mlp, c.n_heads, c.vocab_size, c.dtype, self.fingerprint,
               len(self.edits))  # fmt: skip
        return html_table(f"model {self.name}", header, [row])
