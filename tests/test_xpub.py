"""xpub parsing and BIP32 public derivation: BIP32 vectors, invalid keys, pycoin and hathorlib as oracles."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycoin.networks.registry import network_for_netcode

from miningproxy.hathor import xpub as X
from miningproxy.hathor.addresses import b58encode, decode_address
from miningproxy.hathor.networks import MAINNET, TESTNET
from miningproxy.hathor.xpub import XPubError, derive_addresses, iter_addresses, parse_xpub

# BIP32 test vectors 1 and 2 (the public keys of each path).
V1_M = "xpub661MyMwAqRbcFtXgS5sYJABqqG9YLmC4Q1Rdap9gSE8NqtwybGhePY2gZ29ESFjqJoCu1Rupje8YtGqsefD265TMg7usUDFdp6W1EGMcet8"
V1_M_0H = "xpub68Gmy5EdvgibQVfPdqkBBCHxA5htiqg55crXYuXoQRKfDBFA1WEjWgP6LHhwBZeNK1VTsfTFUHCdrfp1bgwQ9xv5ski8PX9rL2dZXvgGDnw"
V1_M_0H_1 = "xpub6ASuArnXKPbfEwhqN6e3mwBcDTgzisQN1wXN9BJcM47sSikHjJf3UFHKkNAWbWMiGj7Wf5uMash7SyYq527Hqck2AxYysAA7xmALppuCkwQ"
V1_M_0H_1_2H = "xpub6D4BDPcP2GT577Vvch3R8wDkScZWzQzMMUm3PWbmWvVJrZwQY4VUNgqFJPMM3No2dFDFGTsxxpG5uJh7n7epu4trkrX7x7DogT5Uv6fcLW5"
V1_M_0H_1_2H_2 = "xpub6FHa3pjLCk84BayeJxFW2SP4XRrFd1JYnxeLeU8EqN3vDfZmbqBqaGJAyiLjTAwm6ZLRQUMv1ZACTj37sR62cfN7fe5JnJ7dh8zL4fiyLHV"
V1_LAST = "xpub6H1LXWLaKsWFhvm6RVpEL9P4KfRZSW7abD2ttkWP3SSQvnyA8FSVqNTEcYFgJS2UaFcxupHiYkro49S8yGasTvXEYBVPamhGW6cFJodrTHy"
V2_M = "xpub661MyMwAqRbcFW31YEwpkMuc5THy2PSt5bDMsktWQcFF8syAmRUapSCGu8ED9W6oDMSgv6Zz8idoc4a6mr8BDzTJY47LJhkJ8UB7WEGuduB"
V2_M_0 = "xpub69H7F5d8KSRgmmdJg2KhpAK8SR3DjMwAdkxj3ZuxV27CprR9LgpeyGmXUbC6wb7ERfvrnKZjXoUmmDznezpbZb7ap6r1D3tgFxHmwMkQTPH"
V2_M_0_H_1 = "xpub6DF8uhdarytz3FWdA8TvFSvvAh8dP3283MY7p2V4SeE2wyWmG5mg5EwVvmdMVCQcoNJxGoWaU9DCWh89LojfZ537wTfunKau47EL2dhHKon"
V2_M_0_H_1_H = "xpub6ERApfZwUNrhLCkDtcHTcxd75RbzS1ed54G1LkBUHQVHQKqhMkhgbmJbZRkrgZw4koxb5JaHWkY4ALHY2grBGRjaDMzQLcgJvLJuZZvRcEL"
V2_LAST = "xpub6FnCn6nSzZAw5Tw7cgR9bi15UV96gLZhjDstkXXxvCLsUXBGXPdSnLFbdpq8p9HmGsApME5hQTZ3emM2rnY5agb9rXpVGyy3bdW6EEgAtqt"
ALL_VALID = [
    V1_M,
    V1_M_0H,
    V1_M_0H_1,
    V1_M_0H_1_2H,
    V1_M_0H_1_2H_2,
    V1_LAST,
    V2_M,
    V2_M_0,
    V2_M_0_H_1,
    V2_M_0_H_1_H,
    V2_LAST,
]

BTC = network_for_netcode("BTC")


@pytest.fixture(params=["native", "python"])
def backend(request, monkeypatch):
    """Run derivation tests with pycryptodome's curve math and with the pure-Python fallback."""
    if request.param == "python":
        monkeypatch.setattr(X, "_native_tweak", None)
    elif X._native_tweak is None:
        pytest.skip("this pycryptodome has no secp256k1")
    return request.param


@pytest.mark.parametrize(
    ("parent", "index", "child"),
    [
        (V1_M_0H, 1, V1_M_0H_1),
        (V1_M_0H_1_2H, 2, V1_M_0H_1_2H_2),
        (V1_M_0H_1_2H_2, 1_000_000_000, V1_LAST),
        (V2_M, 0, V2_M_0),
        (V2_M_0_H_1_H, 2, V2_LAST),
    ],
)
def test_bip32_public_derivation_vectors(backend, parent, index, child):
    assert parse_xpub(parent).child(index).to_base58() == child


@pytest.mark.parametrize("text", ALL_VALID)
def test_valid_vectors_round_trip(text):
    key = parse_xpub(text)
    assert key.to_base58() == text
    assert len(key.public_key) == 33 and len(key.chain_code) == 32


def test_hardened_child_cannot_be_derived_from_a_public_key():
    with pytest.raises(XPubError, match="2\\*\\*31"):
        parse_xpub(V1_M).child(2**31)
    with pytest.raises(XPubError):
        parse_xpub(V1_M).child(-1)


def _reencode(raw: bytes) -> str:
    return b58encode(raw + hashlib.sha256(hashlib.sha256(raw).digest()).digest()[:4])


def _mutated(offset: int, value: bytes) -> str:
    raw = bytearray(parse_xpub(V1_M_0H_1).serialize())
    raw[offset : offset + len(value)] = value
    return _reencode(bytes(raw))


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("xpub", "bytes"),
        (V1_M[:-1] + ("9" if V1_M[-1] != "9" else "8"), "checksum"),
        (V1_M.replace("y", "0", 1), "base58"),
        (V1_M * 2, "too long"),
        (_mutated(0, bytes.fromhex("0488ade4")), "PRIVATE"),
        (_mutated(0, bytes.fromhex("deadbeef")), "unknown extended key version"),
        (_mutated(45, b"\x04"), "02 or 03"),
        (_mutated(45, b"\x00"), "02 or 03"),
        (_mutated(46, (2**256 - 1).to_bytes(32, "big")), "field size"),
        # BIP32 test vector 5: depth 0 with a parent fingerprint / child number.
        (
            "xpub661no6RGEX3uJkY4bNnPcw4URcQTrSibUZ4NqJEw5eBkv7ovTwgiT91XX27VbEXGENhYRCf7hyEbWrR3FewATdCEebj6znwMfQkhRYHRLpJ",
            "depth-0",
        ),
        (
            _reencode(
                bytes.fromhex("0488b21e") + b"\0" * 5 + b"\0\0\0\1" + parse_xpub(V1_M).serialize()[13:]
            ),
            "depth-0",
        ),
        # BIP32 test vector 5: bad public key prefixes.
        (
            "xpub661MyMwAqRbcEYS8w7XLSVeEsBXy79zSzH1J8vCdxAZningWLdN3zgtU6Txnt3siSujt9RCVYsx4qHZGc62TG4McvMGcAUjeuwZdduYEvFn",
            "02 or 03",
        ),
    ],
)
def test_invalid_xpubs_are_refused_with_a_reason(text, why):
    with pytest.raises(XPubError, match=why):
        parse_xpub(text)


def test_a_point_off_the_curve_is_refused():
    # x = 5: 5**3 + 7 = 132 is not a square mod p.
    text = _mutated(45, b"\x02" + (5).to_bytes(32, "big"))
    with pytest.raises(XPubError, match="not a point"):
        parse_xpub(text)


def test_non_string_is_refused():
    with pytest.raises(XPubError):
        parse_xpub(None)  # type: ignore[arg-type]


@settings(max_examples=25)
@given(index=st.integers(min_value=0, max_value=2**31 - 1), which=st.sampled_from(ALL_VALID))
def test_children_match_pycoin(index, which):
    ours = parse_xpub(which).child(index)
    theirs = BTC.parse.bip32(which).subkey(index)
    assert ours.public_key == theirs.sec()
    assert ours.to_base58() == theirs.hwif()


def test_python_and_native_curve_math_agree():
    if X._native_tweak is None:
        pytest.skip("this pycryptodome has no secp256k1")
    point = parse_xpub(V2_M).point
    for tweak in (1, 2, 3, X.N - 1, 0xDEADBEEF << 200):
        assert X._python_tweak(tweak, point) == X._native_tweak(tweak, point)
    # k*G + (-(k*G)) is the point at infinity in both.
    kg = X._python_tweak(7, X._g_powers()[0])  # 8G
    assert kg is not None
    neg = (kg[0], X.P - kg[1])
    assert X._python_tweak(8, neg) is None
    assert X._native_tweak(8, neg) is None


def test_addresses_match_hathorlib_encoding():
    from hathorlib.utils.address import get_address_from_public_key_hash, get_hash160

    key = parse_xpub(V2_M)
    for index, address in derive_addresses(key, TESTNET, 0, 5):
        pub = key.child(index).public_key
        expected = get_address_from_public_key_hash(
            get_hash160(pub), version_byte=bytes([TESTNET.p2pkh_version])
        )
        assert decode_address(address, TESTNET).hash160 == get_hash160(pub)
        assert address == b58encode(expected)
        assert address.startswith("W") and len(address) == 34
    mainnet = derive_addresses(key, MAINNET, 0, 1)[0][1]
    assert mainnet.startswith("H")


def test_derive_addresses_counts_from_first_index():
    key = parse_xpub(V1_M)
    pairs = derive_addresses(key, TESTNET, 7, 3)
    assert [i for i, _ in pairs] == [7, 8, 9]
    assert pairs == [next(iter_addresses(key, TESTNET, i)) for i in (7, 8, 9)]
