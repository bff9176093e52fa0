"""The Hathor domain, pure (no I/O): networks, addresses and scripts, block serialization, the
node's block templates, and block assembly for mining jobs."""
