"""Hathor network parameters the proxy needs: address version bytes and the block data limit."""

from __future__ import annotations

from dataclasses import dataclass

BLOCK_DATA_MAX_SIZE = 100  # hathor-core's BLOCK_DATA_MAX_SIZE; the same on every network


@dataclass(frozen=True)
class Network:
    name: str
    p2pkh_version: int
    p2sh_version: int
    block_data_max: int = BLOCK_DATA_MAX_SIZE

    @property
    def versions(self) -> tuple[int, int]:
        """The address version bytes that belong to this network (P2PKH, P2SH)."""
        return (self.p2pkh_version, self.p2sh_version)


MAINNET = Network("mainnet", p2pkh_version=0x28, p2sh_version=0x64)
TESTNET = Network("testnet", p2pkh_version=0x49, p2sh_version=0x87)


def network_for_name(name: str) -> Network:
    """The network called ``name``: "mainnet" is mainnet; every other Hathor network (testnets,
    nano-testnets, privatenets, localnet, unittests) uses the testnet version bytes, under its own name."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"network name must be a non-empty string, got {name!r}")
    if name == MAINNET.name:
        return MAINNET
    if name == TESTNET.name:
        return TESTNET
    return Network(name, p2pkh_version=TESTNET.p2pkh_version, p2sh_version=TESTNET.p2sh_version)
