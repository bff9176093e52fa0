"""Genesis vertices of the dev node: one block and two transactions, as on a real private network.

A real Hathor network starts from a genesis block (paying the premine to one output) and two empty
genesis transactions stamped one and two seconds after it. Every block template then lists
``[tip, tx, tx]`` as parents (the two transactions sorted by hash). With the defaults below the dev
node reproduces the genesis of a real ``privatenet-fastmine`` node (block weight 8) bit for bit, so
the transcripts in shared/protocol replay against it unchanged.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from functools import lru_cache

from hashing.header import HeaderHasher, check_pow
from miningproxy.hathor.block import Block, TxOutput

# The private network's premine: 1B HTR (two decimal places) to the genesis wallet's P2PKH script.
GENESIS_OUTPUT_SCRIPT = bytes.fromhex("76a91466665b27f7dbc4c8c089d2f686c170c74d66f0b588ac")
GENESIS_TOKENS = 1_000_000_000 * 100
GENESIS_TIMESTAMP = 1643902665
GENESIS_BLOCK_WEIGHT = 8.0
GENESIS_TX_WEIGHT = 1.0
TX_VERSION_REGULAR = 1
_TX_GRAPH = struct.Struct("!dIB")
_MAX_GENESIS_TRIES = 1 << 24


@dataclass(frozen=True)
class GenesisTx:
    """An empty genesis transaction: no inputs, outputs, tokens or parents."""

    timestamp: int
    weight: float
    nonce: int

    def mining_header(self) -> bytes:
        funds = bytes((0, TX_VERSION_REGULAR, 0, 0, 0))  # signal_bits, version, tokens, inputs, outputs
        graph = _TX_GRAPH.pack(self.weight, self.timestamp, 0)
        return hashlib.sha256(funds).digest() + hashlib.sha256(graph).digest()

    @property
    def hash(self) -> bytes:
        # Transactions serialize a 4-byte nonce but hash it as 16 bytes, like blocks.
        return HeaderHasher(self.mining_header()).hash_nonce(self.nonce)


@dataclass(frozen=True)
class Genesis:
    block: Block  # with its nonce
    tx1: GenesisTx
    tx2: GenesisTx

    @property
    def block_hash(self) -> bytes:
        return self.block.hash()

    @property
    def tx_hashes(self) -> tuple[bytes, bytes]:
        return (self.tx1.hash, self.tx2.hash)

    @property
    def txs(self) -> tuple[GenesisTx, GenesisTx]:
        return (self.tx1, self.tx2)


def _first_nonce(header: bytes, weight: float) -> int:
    hasher = HeaderHasher(header)
    for nonce in range(_MAX_GENESIS_TRIES):
        if check_pow(hasher.hash_nonce(nonce), weight):
            return nonce
    raise ValueError(f"no genesis nonce below {_MAX_GENESIS_TRIES} for weight {weight}")


@lru_cache(maxsize=16)
def make_genesis(
    timestamp: int = GENESIS_TIMESTAMP,
    *,
    block_weight: float = GENESIS_BLOCK_WEIGHT,
    tx_weight: float = GENESIS_TX_WEIGHT,
    output_script: bytes = GENESIS_OUTPUT_SCRIPT,
    tokens: int = GENESIS_TOKENS,
) -> Genesis:
    """Mine a genesis (first valid nonce from 0, as the node's genesis generator does).

    Keep ``block_weight`` small (the default 8 takes ~256 hashes)."""
    unmined = Block(0, 0, (TxOutput(tokens, 0, output_script),), block_weight, timestamp, (), b"")
    nonce = _first_nonce(unmined.mining_header(), block_weight)
    block = Block(0, 0, unmined.outputs, block_weight, timestamp, (), b"", nonce)
    txs = []
    for offset in (1, 2):
        tx = GenesisTx(timestamp + offset, tx_weight, 0)
        txs.append(GenesisTx(tx.timestamp, tx_weight, _first_nonce(tx.mining_header(), tx_weight)))
    return Genesis(block, txs[0], txs[1])
