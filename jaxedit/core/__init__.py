"""The decoder and the values every layer shares: config, parameter layout, the forward pass with taps and
interventions, tokenization, cached generation, readout and sharding. Imports nothing above it."""
