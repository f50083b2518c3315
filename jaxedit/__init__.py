"""jaxedit: locate and edit factual knowledge in transformer language models, in JAX.

Quick start::

    import jaxedit
    model = jaxedit.load_model("smollm2")
    jaxedit.generate_text(model, "The Eiffel Tower is located in the city of")
"""

from jaxedit import tokens
from jaxedit.compile_cache import enable_compile_cache
from jaxedit.config import ConfigError, ModelConfig
from jaxedit.flax_export import save_flax
from jaxedit.generate import generate, generate_text
from jaxedit.interventions import SiteEdit
from jaxedit.loading import Model, load_model, save_hf
from jaxedit.model import Output, forward
from jaxedit.predict import next_tokens
from jaxedit.sharding import make_mesh, shard

__all__ = [
    "ConfigError",
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
