"""Checkpoints in and out: Hugging Face folders (safetensors, PyTorch bins, Flax msgpack), GGUF, the
families' strict tensor-name tables, files jaxedit owns (atomic writes, refusals) and keyed caches."""
