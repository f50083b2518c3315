"""How programs run, never what they compute: the execution policy resolved per backend, the persistent
compile cache and its log, and the CPU's row blocks and side-by-side threads."""
