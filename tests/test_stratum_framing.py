"""Line framing (max line length, CRLF, invalid UTF-8), ban scores and settings checks."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from miningproxy.stratum.ban import BanList, is_loopback
from miningproxy.stratum.framing import LineFramer, LineTooLong, NotUtf8
from miningproxy.stratum.settings import BanSettings, SettingsError, StratumSettings


def feed_all(framer: LineFramer, chunks: list[bytes]) -> list:
    return [event for chunk in chunks for event in framer.feed(chunk)]


def test_lines_split_on_newline_with_crlf_and_blank_lines_dropped():
    framer = LineFramer(100)
    assert framer.feed(b'{"a":1}\r\n\n  \r\n{"b"') == ['{"a":1}']
    assert framer.feed(b":2}\n") == ['{"b":2}']
    assert framer.buffered == 0


def test_a_line_of_exactly_max_line_bytes_passes_one_more_does_not():
    framer = LineFramer(10)
    assert framer.feed(b"x" * 10 + b"\r\n") == ["x" * 10]
    assert framer.feed(b"y" * 11 + b"\n") == [LineTooLong(11)]
    assert framer.feed(b"z\n") == []  # broken for good: the connection is being closed


def test_an_endless_line_is_caught_without_buffering_it():
    framer = LineFramer(1000)
    events = []
    for _ in range(5):
        events += framer.feed(b"a" * 400)
    assert events == [LineTooLong(1200)]
    assert framer.buffered == 0


def test_lines_before_an_oversized_one_are_still_delivered():
    framer = LineFramer(10)
    assert framer.feed(b"ok\n" + b"x" * 30 + b"\n") == ["ok", LineTooLong(30)]


def test_invalid_utf8_is_reported_and_later_lines_still_come():
    framer = LineFramer(100)
    assert framer.feed(b"\xff\xfe{}\nfine\n") == [NotUtf8(b"\xff\xfe{}"), "fine"]


@given(
    lines=st.lists(
        st.text(
            alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"),
            min_size=1,
            max_size=40,
        ),
        max_size=20,
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=10),
    crlf=st.booleans(),
)
def test_any_chunking_gives_the_same_lines(lines, cuts, crlf):
    data = b"".join(line.encode() + (b"\r\n" if crlf else b"\n") for line in lines)
    points = sorted({min(c, len(data)) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    events = feed_all(LineFramer(1000), chunks)
    assert events == [line for line in lines if line.strip()]


def expected_events(raw_lines: list[bytes]) -> list:
    """What the framer must make of these complete lines, spelled out line by line."""
    events: list = []
    for raw in raw_lines:
        raw = raw[:-1] if raw.endswith(b"\r") else raw
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            events.append(NotUtf8(raw[:64]))
            continue
        if text.strip():
            events.append(text)
    return events


@given(
    st.lists(
        st.tuples(
            st.one_of(
                st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")),
                st.text(max_size=20).map(lambda t: t.replace("\n", "").encode()),
                st.sampled_from([b"", b"\r", b" \t", b"\xc2\xa0", b"\r\r", b"\xff{}"]),
            ),
            st.booleans(),  # ended with CRLF
        ).map(lambda line: line[0] + b"\r" if line[1] else line[0]),
        max_size=30,
    ),
    st.integers(min_value=1, max_value=400),
)
def test_a_read_of_whole_lines_is_framed_as_line_by_line(raw_lines, size):
    """The usual read (whole lines, as a rig writes them) takes a shortcut: one decode and one
    split for the read. Whatever the lines hold (invalid UTF-8, CR, Unicode spaces, blanks), it
    gives what framing them one by one gives, in one read or cut anywhere."""
    data = b"".join(raw + b"\n" for raw in raw_lines)
    assert LineFramer(1000).feed(data) == expected_events(raw_lines)
    chunks = [data[i : i + size] for i in range(0, len(data), size)]
    assert feed_all(LineFramer(1000), chunks) == expected_events(raw_lines)


_OBJECT_LINE = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n"), max_size=30
).map(lambda inner: ("{" + inner + "}").encode())


@given(
    st.lists(
        st.one_of(
            _OBJECT_LINE,  # what rigs send: the reads that skip the loop over lines
            _OBJECT_LINE.map(lambda line: line + b"\r"),
            _OBJECT_LINE.map(lambda line: b" " + line),
            _OBJECT_LINE.map(lambda line: line + b"\t"),
            st.sampled_from([b"", b"{", b"}", b"}{", b"\xc2\xa0{}", b"{}\xc2\xa0", b"\r"]),
        ),
        min_size=1,
        max_size=30,
    ).filter(lambda lines: any(lines)),
    st.booleans(),
)
def test_a_read_of_json_object_lines_is_framed_as_line_by_line(raw_lines, only_objects):
    """A read whose every line ends with ``}`` is returned as split, without a look at each
    line; one odd line among them (CR, a space, a blank) and each is looked at."""
    if only_objects:
        raw_lines = [line for line in raw_lines if line[:1] == b"{" and line[-1:] == b"}"] or [b"{}"]
    data = b"".join(raw + b"\n" for raw in raw_lines)
    assert LineFramer(1000).feed(data) == expected_events(raw_lines)


@given(st.binary(max_size=3000), st.integers(min_value=1, max_value=64))
def test_arbitrary_bytes_never_break_the_framer(data, size):
    framer = LineFramer(256)
    for start in range(0, len(data), size):
        for event in framer.feed(data[start : start + size]):
            assert isinstance(event, str | LineTooLong | NotUtf8)
            if isinstance(event, str):
                assert len(event.encode()) <= 256
    assert framer.buffered <= 257


# --- ban scores ----------------------------------------------------------------------------------


def test_points_drain_over_time_and_a_flood_is_banned():
    bans = BanList(BanSettings(threshold=10, decay=1.0, duration=60, loopback=True))
    assert not bans.add("10.0.0.1", 5, now=0.0)
    assert bans.score("10.0.0.1", 3.0) == pytest.approx(2.0)
    assert not bans.add("10.0.0.1", 5, now=5.0)  # drained to 0, then 5
    assert bans.add("10.0.0.1", 6, now=5.0)  # crosses 10: banned
    assert bans.banned("10.0.0.1", 30.0) and not bans.banned("10.0.0.2", 30.0)
    assert not bans.banned("10.0.0.1", 65.1)


def test_loopback_is_exempt_unless_asked_and_disabled_bans_nothing():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("10.1.2.3") and not is_loopback("?")
    assert not BanList(BanSettings(threshold=1)).add("127.0.0.1", 100, 0.0)
    assert BanList(BanSettings(threshold=1, loopback=True)).add("127.0.0.1", 100, 0.0)
    assert not BanList(BanSettings(threshold=1, enabled=False)).add("10.0.0.1", 100, 0.0)


def test_tracked_ips_are_bounded():
    bans = BanList(BanSettings(threshold=100), max_tracked=3)
    for i in range(10):
        bans.add(f"10.0.0.{i}", 1, 0.0)
    assert len(bans._scores) == 3


# --- settings ------------------------------------------------------------------------------------


def test_default_settings_are_valid():
    settings = StratumSettings().check()
    assert settings.max_line == 16384 and settings.job_interval == 30.0 and settings.job_history == 8


@pytest.mark.parametrize(
    "changes, key",
    [
        ({"listen": ("127.0.0.1", 70000)}, "stratum.listen"),
        ({"tls_listen": ("0.0.0.0", 8443)}, "stratum.tls_cert"),
        ({"tls_listen": ("0.0.0.0", 8443), "tls_cert": "c.pem"}, "stratum.tls_key"),
        ({"max_line": 10}, "stratum.max_line"),
        ({"max_per_ip": 0}, "stratum.max_per_ip"),
        ({"subscribe_timeout": 0}, "stratum.subscribe_timeout"),
        ({"job_interval": 301}, "stratum.job_interval"),
        ({"job_history": True}, "stratum.job_history"),
        ({"ban": BanSettings(threshold=0)}, "stratum.ban.threshold"),
    ],
)
def test_bad_settings_name_their_key(changes, key):
    with pytest.raises(SettingsError) as info:
        dataclasses.replace(StratumSettings(), **changes).check()
    assert info.value.key == key
