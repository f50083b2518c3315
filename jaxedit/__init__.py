"""jaxedit: locate and edit factual knowledge in transformer language models, in JAX.

Quick start::

    import jaxedit
    model = jaxedit.load_model("smollm2")
    jaxedit.generate_text(model, "The Eiffel Tower is located in the city of")
"""

from jaxedit.core import tokens
from jaxedit.core.config import ConfigError, ModelConfig
from jaxedit.core.decoder import Output, forward
from jaxedit.core.generate import generate, generate_text
from jaxedit.core.interventions import SiteEdit
from jaxedit.core.predict import next_tokens
from jaxedit.core.sharding import make_mesh, shard
from jaxedit.io.flax_export import save_flax
from jaxedit.io.loading import Model, load_model, save_hf
from jaxedit.runtime.compile_cache import enable_compile_cache
from jaxedit.runtime.execution import Execution

__all__ = [
    "ConfigError",
    "Execution",
    "Model",
    "ModelConfig",
    "Output",
    "SiteEdit",
    "enable_compile_cache",
    "forward",
    "generate",
    "generate_text",
    "load_model",
    "make_mesh",
    "next_tokens",
    "save_flax",
    "save_hf",
    "shard",
    "tokens",
]
__version__ = "0.1.0"
