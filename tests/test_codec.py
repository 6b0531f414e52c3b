"""sandlot._core.packb / unpackb: round trips, byte-exact agreement with
msgpack-python, and hostile input (which must fail fast with ValueError)."""

import collections
import enum
import math
import struct
import time

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandlot import _core

packb = _core.packb
unpackb = _core.unpackb

MAX_DEPTH = 64
MAX_BODY = 65 * 1024 * 1024


def same(a, b):
    """Type-strict structural equality where nan equals nan and -0.0 != 0.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        if len(a) != len(b):
            return False
        # Keys are scalars: compare key lists in order, then values.
        return all(same(ka, kb) and same(a[ka], b[kb]) for ka, kb in zip(a, b))
    return a == b


def normalize(obj):
    """What a round trip should give back: tuples become lists, bytes-likes bytes."""
    if isinstance(obj, (list, tuple)):
        return [normalize(x) for x in obj]
    if isinstance(obj, dict):
        return {normalize(k): normalize(v) for k, v in obj.items()}
    if isinstance(obj, (bytearray, memoryview)):
        return bytes(obj)
    return obj


def ext1(n):
    """The reference encoding of a big int, built with msgpack-python."""
    length = (n.bit_length() + 8) // 8
    payload = n.to_bytes(length, "little", signed=True)
    while len(payload) > 1 and (
        (payload[-1] == 0x00 and payload[-2] < 0x80) or (payload[-1] == 0xFF and payload[-2] >= 0x80)
    ):
        payload = payload[:-1]
    return msgpack.packb(msgpack.ExtType(1, payload))


def ext_hook(code, data):
    if code == 1:
        return int.from_bytes(data, "little", signed=True)
    return msgpack.ExtType(code, data)


# ----------------------------------------------------------------- strategies

small_ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
any_ints = st.one_of(
    small_ints,
    st.integers(),
    st.integers(min_value=-(2**300), max_value=2**300),
    st.sampled_from([2**64, -(2**63) - 1, -(2**64), -(2**71), 2**71, 2**127 - 1, -(2**127)]),
)
key_scalars = st.one_of(
    st.none(), st.booleans(), any_ints, st.floats(allow_nan=False), st.text(), st.binary()
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    any_ints,
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(),
    st.binary(),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=6),
        st.tuples(children, children),
        st.dictionaries(key_scalars, children, max_size=6),
    ),
    max_leaves=40,
)

common_scalars = st.one_of(
    st.none(),
    st.booleans(),
    small_ints,
    st.floats(allow_nan=False),
    st.text(),
    st.binary(),
)
common_values = st.recursive(
    common_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=6),
        st.dictionaries(st.one_of(st.text(), small_ints), children, max_size=6),
    ),
    max_leaves=40,
)


# ------------------------------------------------------------------ round trips


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_round_trip(obj):
    data = packb(obj)
    assert isinstance(data, bytes)
    back = unpackb(data)
    assert same(back, normalize(obj)), (obj, back)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(common_values)
def test_bytes_equal_msgpack_python(obj):
    ours = packb(obj)
    theirs = msgpack.packb(obj, use_bin_type=True)
    assert ours == theirs
    assert same(unpackb(theirs), obj)


@settings(max_examples=200, deadline=None)
@given(any_ints)
def test_ints_match_reference_encoding(n):
    if -(2**63) <= n < 2**64:
        assert packb(n) == msgpack.packb(n)
    else:
        assert packb(n) == ext1(n)
    assert unpackb(packb(n)) == n
    assert type(unpackb(packb(n))) is int


@pytest.mark.parametrize(
    "n",
    [0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1]
    + [-1, -32, -33, -128, -129, -32768, -32769, -(2**31), -(2**31) - 1, -(2**63)],
)
def test_int_boundaries_exact(n):
    assert packb(n) == msgpack.packb(n)
    assert unpackb(packb(n)) == n


@pytest.mark.parametrize(
    "n, payload",
    [
        (2**64, b"\x00" * 8 + b"\x01"),
        (-(2**63) - 1, b"\xff" * 7 + b"\x7f" + b"\xff"),
        (-(2**64), b"\x00" * 8 + b"\xff"),
        (-(2**71), b"\x00" * 8 + b"\x80"),  # fits in 9 bytes, not 10
        (2**71, b"\x00" * 8 + b"\x80" + b"\x00"),
        (2**127 - 1, b"\xff" * 15 + b"\x7f"),
        (-(2**127), b"\x00" * 15 + b"\x80"),
    ],
)
def test_bigint_ext_payload(n, payload):
    data = packb(n)
    assert data == msgpack.packb(msgpack.ExtType(1, payload))
    assert unpackb(data) == n


def test_bigint_huge():
    for n in (2**100000, -(2**100000) + 12345, 7**5000):
        assert unpackb(packb(n)) == n


def test_ext1_non_minimal_payload_still_decodes():
    assert unpackb(msgpack.packb(msgpack.ExtType(1, b"\x05\x00\x00\x00"))) == 5
    assert unpackb(msgpack.packb(msgpack.ExtType(1, b"\xfe\xff"))) == -2


@pytest.mark.parametrize(
    "obj",
    ["", "a" * 31, "a" * 32, "é" * 200, "a" * 255, "a" * 256, "z" * 65535, "z" * 65536]
    + [b"", b"\x00" * 255, b"\x00" * 256, b"\x01" * 65535, b"\x01" * 65536]
    + [list(range(15)), list(range(16)), [None] * 65535, [None] * 65536]
    + [{i: i for i in range(15)}, {i: i for i in range(16)}, {str(i): i for i in range(65536)}]
    + [0.0, -0.0, 1.5, float("inf"), float("-inf"), 1e308, 5e-324, True, False, None],
)
def test_format_boundaries_exact(obj):
    assert packb(obj) == msgpack.packb(obj, use_bin_type=True)
    assert same(unpackb(packb(obj)), obj)


def test_nan_round_trip():
    data = packb(float("nan"))
    assert data[0] == 0xCB
    assert math.isnan(unpackb(data))
    assert math.isnan(unpackb(packb([float("nan")]))[0])


def test_non_ascii_and_astral_text():
    s = "naïve ☃ 日本語 \U0001f600 \x00 end"
    assert packb(s) == msgpack.packb(s)
    assert unpackb(packb({s: [s]})) == {s: [s]}


def test_tuples_come_back_as_lists():
    assert unpackb(packb((1, (2, (3,)), []))) == [1, [2, [3]], []]


def test_bool_is_not_int():
    assert packb(True) == b"\xc3" and packb(False) == b"\xc2"
    assert unpackb(b"\xc3") is True and unpackb(b"\xc2") is False
    assert unpackb(b"\x01") == 1 and type(unpackb(b"\x01")) is int


def test_subclasses_pack_as_their_base():
    class MyInt(int):
        def __index__(self):
            raise AssertionError("must not be called")

    class MyStr(str):
        pass

    class MyFloat(float):
        pass

    class MyList(list):
        def __iter__(self):
            raise AssertionError("must not be called")

    class MyDict(dict):
        def items(self):
            raise AssertionError("must not be called")

    class Color(enum.IntEnum):
        RED = 3

    obj = MyDict(
        {
            MyStr("k"): MyList([MyInt(5), MyFloat(2.5), Color.RED, MyInt(2**70)]),
            "od": collections.OrderedDict([("x", 1)]),
            "t": (1, 2),
        }
    )
    plain = {"k": [5, 2.5, 3, 2**70], "od": {"x": 1}, "t": [1, 2]}
    assert packb(obj) == packb(plain)
    assert unpackb(packb(obj)) == plain


def test_bytes_likes_pack_as_bin():
    assert packb(bytearray(b"abc")) == packb(b"abc") == b"\xc4\x03abc"
    assert packb(memoryview(b"abc")) == b"\xc4\x03abc"
    assert packb(memoryview(b"abcdef")[::2]) == b"\xc4\x03ace"  # strided
    assert packb(memoryview(bytes(range(8))).cast("I")) == packb(bytes(range(8)))
    assert unpackb(packb([bytearray(b"\x00\xff")])) == [b"\x00\xff"]


def test_unpackb_accepts_buffers():
    data = packb({"a": [1, b"x"]})
    for buf in (data, bytearray(data), memoryview(data)):
        assert unpackb(buf) == {"a": [1, b"x"]}
    assert unpackb(memoryview(b"xx" + data)[2:]) == {"a": [1, b"x"]}
    with pytest.raises(TypeError):
        unpackb("not bytes")


def test_unpackb_decodes_every_format():
    cases = {
        b"\xc0": None,
        b"\x7f": 127,
        b"\xe0": -32,
        b"\xcc\xff": 255,
        b"\xcd\xff\xff": 65535,
        b"\xce\xff\xff\xff\xff": 2**32 - 1,
        b"\xcf" + b"\xff" * 8: 2**64 - 1,
        b"\xd0\x80": -128,
        b"\xd1\x80\x00": -32768,
        b"\xd2\x80\x00\x00\x00": -(2**31),
        b"\xd3\x80" + b"\x00" * 7: -(2**63),
        b"\xca" + struct.pack(">f", 1.25): 1.25,
        b"\xcb" + struct.pack(">d", -2.5): -2.5,
        b"\xa2hi": "hi",
        b"\xd9\x02hi": "hi",
        b"\xda\x00\x02hi": "hi",
        b"\xdb\x00\x00\x00\x02hi": "hi",
        b"\xc4\x01\x00": b"\x00",
        b"\xc5\x00\x01\x00": b"\x00",
        b"\xc6\x00\x00\x00\x01\x00": b"\x00",
        b"\x92\x01\x02": [1, 2],
        b"\xdc\x00\x01\x01": [1],
        b"\xdd\x00\x00\x00\x01\x01": [1],
        b"\x81\x01\x02": {1: 2},
        b"\xde\x00\x01\xc0\xc3": {None: True},
        b"\xdf\x00\x00\x00\x01\xc4\x00\x90": {b"": []},
        b"\xd4\x01\x05": 5,
        b"\xd5\x01\x00\x80": -(2**15),
        b"\xd6\x01\x01\x00\x00\x00": 1,
        b"\xd7\x01" + b"\xff" * 8: -1,
        b"\xd8\x01" + b"\x00" * 15 + b"\x01": 2**120,
        b"\xc7\x01\x01\x07": 7,
        b"\xc8\x00\x01\x01\x07": 7,
        b"\xc9\x00\x00\x00\x01\x01\x07": 7,
    }
    for data, want in cases.items():
        got = unpackb(data)
        assert same(got, want), (data, got, want)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_fail_cleanly_or_match_msgpack_python(data):
    try:
        ours = unpackb(data)
    except ValueError:
        return
    theirs = msgpack.unpackb(data, strict_map_key=False, ext_hook=ext_hook, raw=False)
    assert same(ours, theirs)


@settings(max_examples=200, deadline=None)
@given(common_values, st.data())
def test_mutated_encodings_never_crash(obj, data):
    buf = bytearray(packb(obj))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(buf) - 1))
        buf[i] = data.draw(st.sampled_from([0x00, 0xC1, 0xDD, 0xDF, 0xDB, 0xC6, 0xFF, 0x91]))
    try:
        unpackb(bytes(buf))
    except ValueError:
        pass


# ------------------------------------------------------------- hostile inputs


@pytest.mark.parametrize(
    "data, fragment",
    [
        (b"\xdd\xff\x00\x00\x00", "offset 0"),
        (b"\xdd\xff\xff\xff\xff", "offset 0"),
        (b"\xdf\xff\xff\xff\xff", "offset 0"),
        (b"\xdc\xff\xff", "offset 0"),
        (b"\xde\xff\xff", "offset 0"),
        (b"\x92\xdd\x00\x01\x00\x00\xc0", "offset 1"),
        (b"\x82\x01\x02\x03", "offset 0"),
        (b"\xa5abc", "offset 0"),  # truncated fixstr
        (b"\xd9\x05abc", "offset 0"),  # truncated str8
        (b"\xdb\xff\xff\xff\xffabc", "offset 0"),  # str32 claiming 4 GiB
        (b"\xc4\x05ab", "offset 0"),  # truncated bin8
        (b"\xc6\xff\xff\xff\xff", "offset 0"),  # bin32 claiming 4 GiB
        (b"\x91\xc5\x00\x10a", "offset 1"),  # truncated bin16 inside an array
        (b"\xd6\x01\x00", "offset 0"),  # truncated fixext4
        (b"\xc7\x05\x01ab", "offset 0"),  # truncated ext8
        (b"\xc9\xff\xff\xff\xff\x01", "offset 0"),  # ext32 claiming 4 GiB
        (b"\xcb\x00\x00", "offset 0"),  # truncated float64
        (b"\xc1", "offset 0"),
        (b"\x93\x01\x02\xc1", "offset 3"),
        (b"\xc0\xc0", "offset 1"),  # trailing bytes
        (b"\x91\x01\x00\x00", "offset 2"),
        (b"", "offset 0"),
    ],
)
def test_malformed_input_raises_value_error_with_offset(data, fragment):
    with pytest.raises(ValueError) as ei:
        unpackb(data)
    assert fragment in str(ei.value)


def test_malformed_messages_name_the_problem():
    with pytest.raises(ValueError, match=r"array of 4294967295 items declared at offset 0"):
        unpackb(b"\xdd\xff\xff\xff\xff")
    with pytest.raises(ValueError, match=r"map of 4294967295 pairs"):
        unpackb(b"\xdf\xff\xff\xff\xff")
    with pytest.raises(ValueError, match=r"trailing"):
        unpackb(b"\xc0\xc0")
    with pytest.raises(ValueError, match=r"0xc1"):
        unpackb(b"\xc1")
    with pytest.raises(ValueError, match=r"truncated str"):
        unpackb(b"\xa5abc")


def test_huge_count_returns_fast_without_memory_error():
    for data in (b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xdd\xff\x00\x00\x00"):
        start = time.monotonic()
        with pytest.raises(ValueError) as ei:
            unpackb(data)
        elapsed = time.monotonic() - start
        assert not isinstance(ei.value, MemoryError)
        assert "offset 0" in str(ei.value)
        assert elapsed < 5.0


def test_huge_count_behind_valid_prefix():
    # A big but honest prefix, then a lying container: still a ValueError.
    data = b"\x92" + packb(b"x" * 100000) + b"\xdd\xff\xff\xff\xff"
    with pytest.raises(ValueError, match=r"offset 100006"):
        unpackb(data)


def nested(depth):
    return b"\x91" * depth + b"\xc0"


def test_depth_64_ok_65_rejected():
    obj = unpackb(nested(64))
    for _ in range(64):
        assert isinstance(obj, list) and len(obj) == 1
        obj = obj[0]
    assert obj is None
    with pytest.raises(ValueError, match=r"too deep.*offset 64"):
        unpackb(nested(65))
    with pytest.raises(ValueError, match="too deep"):
        unpackb(b"\x81\x01" * 65 + b"\xc0")


def test_depth_well_beyond_limit_is_rejected_not_crashing():
    with pytest.raises(ValueError, match="too deep"):
        unpackb(nested(1_000_000))


def test_max_depth_and_max_size_keywords():
    assert unpackb(nested(3), max_depth=3) == [[[None]]]
    with pytest.raises(ValueError, match="too deep"):
        unpackb(nested(3), max_depth=2)
    assert unpackb(b"\x05", max_depth=0) == 5
    with pytest.raises(ValueError, match="too deep"):
        unpackb(b"\x90", max_depth=0)
    assert unpackb(nested(200), max_depth=200) is not None
    assert unpackb(packb("abc"), max_size=4) == "abc"
    with pytest.raises(ValueError, match="too large"):
        unpackb(packb("abc"), max_size=3)
    with pytest.raises(ValueError):
        unpackb(b"\xc0", max_depth=-1)
    with pytest.raises(TypeError):
        unpackb(b"\xc0", 3)  # keyword-only


def test_default_max_size_is_sl_max_body():
    payload = b"\x00" * (MAX_BODY - 5)
    data = b"\xc6" + len(payload).to_bytes(4, "big") + payload
    assert len(data) == MAX_BODY
    assert unpackb(data) == payload
    with pytest.raises(ValueError, match="too large"):
        unpackb(data + b"\x00")


def test_invalid_utf8_rejected():
    for bad in (b"\xa1\xff", b"\xa2\xc3\x28", b"\xa3\xed\xa0\x80", b"\xa2\xc0\xaf"):
        with pytest.raises(ValueError, match=r"UTF-8.*offset 0"):
            unpackb(bad)
    with pytest.raises(ValueError, match="offset 3"):
        unpackb(b"\x92\xa1a\xa1\xff")


def test_unhashable_map_keys_rejected():
    with pytest.raises(ValueError, match=r"unhashable map key \(array\) at offset 1"):
        unpackb(b"\x81\x91\x01\x02")
    with pytest.raises(ValueError, match=r"unhashable map key \(map\)"):
        unpackb(b"\x81\x80\x01")
    with pytest.raises(ValueError, match="unhashable"):
        unpackb(b"\x81\xdc\x00\x00\x01")


def test_other_ext_types_rejected():
    for data in (msgpack.packb(msgpack.ExtType(2, b"x")), b"\xd6\xff\x00\x00\x00\x00"):
        with pytest.raises(ValueError, match=r"ext type"):
            unpackb(data)
    with pytest.raises(ValueError, match="empty"):
        unpackb(b"\xc7\x00\x01")


# ----------------------------------------------------------- packing failures


def test_unsupported_type_names_type_and_path():
    with pytest.raises(TypeError, match=r"^cannot pack object of type set at \['a'\]\[2\]$"):
        packb({"a": [1, 2, {3}]})
    with pytest.raises(TypeError, match=r"type object at \[0\]\[1\]\[b'k'\]"):
        packb([[0, {b"k": object()}]])
    with pytest.raises(TypeError, match=r"type complex at the top level"):
        packb(1j)
    with pytest.raises(TypeError, match=r"type frozenset at \[7\]<key>"):
        packb({7: {frozenset(): 1}})
    with pytest.raises(TypeError, match=r"type frozenset at \[0\]<key>\[1\]"):
        packb([{(1, frozenset()): 1}])


def test_long_key_repr_is_cut():
    key = "k" * 1000
    with pytest.raises(TypeError) as ei:
        packb({key: set()})
    assert len(str(ei.value)) < 200


def test_key_repr_side_effects_are_safe():
    class Evil(str):
        def __repr__(self):
            holder.clear()
            return "evil"

    holder = {}
    holder[Evil("x")] = [set()]
    with pytest.raises(TypeError, match=r"at \[evil\]\[0\]"):
        packb(holder)


def test_self_reference_raises_value_error():
    lst = []
    lst.append(lst)
    with pytest.raises(ValueError, match="nesting deeper than 64"):
        packb(lst)
    d = {}
    d["d"] = d
    with pytest.raises(ValueError, match="nesting deeper than 64"):
        packb(d)


def test_pack_depth_limit_matches_unpack_limit():
    obj = None
    for _ in range(64):
        obj = [obj]
    assert unpackb(packb(obj)) == obj
    with pytest.raises(ValueError):
        packb([obj])


def test_lone_surrogate_str_rejected():
    with pytest.raises(ValueError, match=r"at \[1\]"):
        packb([1, "\ud800"])


def test_pack_errors_leave_no_partial_state():
    # After an error the next call starts clean.
    with pytest.raises(TypeError):
        packb([1, 2, set()])
    assert packb([1, 2, 3]) == b"\x93\x01\x02\x03"


# --- json_dumps_fast: json.dumps's bytes for plain data ----------------------------


def _json_ref(v):
    import json

    return json.dumps(v, separators=(",", ":")).encode()


def test_json_dumps_fast_matches_json_dumps():
    cases = [None, True, False, 0, -1, 9, 10, -10, 2**63 - 1, -2**63, 2**63, -2**70, 1.5, 0.1, 1e300,
             -0.0, 5e-324, float("nan"), float("inf"), -float("inf"), "", 'a"b\\c\n\r\t\b\f\x00\x1f\x7f',
             "é€😀\ud800", [], (), {}, {"a": [1, (2, 3)], "b": {}}, [[(i,) for i in range(5)], None]]
    for v in cases:
        assert _core.json_dumps_fast(v) == _json_ref(v), v
    assert _core.json_dumps_fast([1, "x"], b"\x00") == b'\x00[1,"x"]'


def test_json_dumps_fast_random_plain_data():
    import random

    rnd = random.Random(7)

    def gen(d=0):
        k = rnd.randrange(9 if d < 5 else 6)
        if k == 0:
            return rnd.randrange(-10**20, 10**20)
        if k == 1:
            return rnd.random() * 10 ** rnd.randrange(-300, 300)
        if k == 2:
            return "".join(chr(rnd.choice([rnd.randrange(128), rnd.randrange(0x110000)])) for _ in range(5))
        if k == 3:
            return rnd.choice([None, True, False])
        if k in (4, 5):
            return rnd.randrange(-100, 100)
        if k == 6:
            return [gen(d + 1) for _ in range(rnd.randrange(4))]
        if k == 7:
            return tuple(gen(d + 1) for _ in range(rnd.randrange(4)))
        return {str(rnd.random()): gen(d + 1) for _ in range(rnd.randrange(4))}

    for _ in range(5000):
        v = gen()
        assert _core.json_dumps_fast(v) == _json_ref(v), v


def test_json_dumps_fast_leaves_the_rest_to_json():
    import enum

    class I(int):
        pass

    class E(enum.IntEnum):
        A = 1

    loop = []
    loop.append(loop)
    deep = []
    for _ in range(100):
        deep = [deep]
    for v in ({1: 2}, {None: 1}, {1.5: 1}, I(3), E.A, {1, 2}, b"x", loop, deep, [object()], {"a": {(1,): 2}}):
        assert _core.json_dumps_fast(v) is None, v
    with pytest.raises(TypeError):
        _core.json_dumps_fast()
    with pytest.raises(TypeError, match="prefix"):
        _core.json_dumps_fast(1, "x")
