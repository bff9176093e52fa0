"""PoW math and nonce scanning for Hathor: pure (no trio, no sockets, no config).

- :mod:`hashing.pow`: weight <-> target, log-work sums, hashrate
- :mod:`hashing.header`: header hashing with a cached midstate, ``check_pow``
- :mod:`hashing.scan`: the fast nonce scanner and the nonce-space split
- :mod:`hashing.workers`: the pool of hashing worker processes
- :mod:`hashing.bench`: the hash benchmark behind ``miningproxy hash-bench``
"""
