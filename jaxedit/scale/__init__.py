"""Models at GPT-J / NeoX scale: architecture presets, memory and FLOP plans, process groups
(`jax.distributed`) and sharded (orbax) checkpoints of edited models."""
