"""The hand-rolled codec paths of issue 12: the encoder's growing buffer,
the decoder's cache of short map keys and its collector pause. Everything is
checked against msgpack-python (byte-exact encodings, equal decodings), and
hostile input in exactly the places the fast paths read bytes themselves."""

import gc

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandlot import _core

packb = _core.packb
unpackb = _core.unpackb

keys = st.text(max_size=40)  # across the cache's 32-byte limit, some non-ASCII
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
                    st.floats(allow_nan=False), st.text(max_size=300), st.binary(max_size=300))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.dictionaries(keys, scalars, max_size=8), max_size=40))
def test_records_match_msgpack_python(records):
    """Lists of records: the shape whose keys the cache serves."""
    b = packb(records)
    assert b == msgpack.packb(records)
    assert unpackb(b) == msgpack.unpackb(b) == records
    assert unpackb(b) == records  # a second decode, now from the cache


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(scalars, st.lists(scalars, max_size=20)), min_size=0, max_size=400))
def test_large_lists_cross_buffer_growth(items):
    """Outputs well past the first 256-byte buffer: every growth step."""
    b = packb(items)
    assert b == msgpack.packb(items)
    assert unpackb(b) == msgpack.unpackb(b)


@pytest.mark.parametrize("n", [0, 1, 31, 32, 33, 255, 256, 257, 65535, 65536, 1 << 20])
def test_str_and_bin_lengths_at_every_boundary(n):
    s, blob = "x" * n, b"\x01" * n
    for obj in (s, blob, {s: blob}, [s, blob, s]):
        assert packb(obj) == msgpack.packb(obj)
        assert unpackb(packb(obj)) == obj


def test_many_distinct_keys_evict_cleanly():
    """More distinct keys than the cache holds, then again in another order:
    every key comes back as the right string."""
    recs = [{f"key{i}": i, f"k{i % 7}": str(i)} for i in range(5000)]
    b = packb(recs)
    assert unpackb(b) == recs
    recs.reverse()
    assert unpackb(packb(recs)) == recs


def test_keys_same_length_different_bytes():
    d = {"ab": 1, "ba": 2, "aa": 3, "bb": 4, "\u00e9": 5, "e\u0301": 6, "": 7}
    for _ in range(3):
        assert unpackb(packb(d)) == d


def test_invalid_utf8_key_is_a_value_error_at_its_offset():
    # {fixstr "\xff": 1} and {str8 "\xc3(": 1}: the cached-key path reads these bytes itself.
    with pytest.raises(ValueError, match=r"UTF-8.*offset 1"):
        unpackb(b"\x81\xa1\xff\x01")
    with pytest.raises(ValueError, match=r"UTF-8.*offset 1"):
        unpackb(b"\x81\xd9\x02\xc3(\x01")
    # The cache was not poisoned by the failed key.
    assert unpackb(b"\x81\xa1a\x01") == {"a": 1}


@pytest.mark.parametrize("data", [
    b"\x81\xd9",             # str8 key header cut before its length
    b"\x81\xd9\x05ab",       # str8 key shorter than declared
    b"\x81\xa5ab",           # fixstr key shorter than declared
    b"\x82\xa1a\x01\xa1",    # second key cut
    b"\x81\xd9\x21" + b"a" * 33,  # 33-byte key (beyond the cache) with no value
])
def test_truncated_keys_fail_cleanly(data):
    with pytest.raises(ValueError):
        unpackb(data)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(keys, scalars, min_size=1, max_size=4), st.data())
def test_mutated_maps_fail_cleanly_or_match_msgpack_python(d, data):
    b = bytearray(packb(d))
    i = data.draw(st.integers(0, len(b) - 1))
    b[i] = data.draw(st.integers(0, 255))
    try:
        ours = unpackb(bytes(b))
    except ValueError:
        return
    theirs = msgpack.unpackb(bytes(b), strict_map_key=False)
    # Compared through msgpack-python's encoding: a mutated float can become
    # NaN, which is never == itself, though both decoders agree on it.
    assert msgpack.packb(ours) == msgpack.packb(theirs)


def test_collector_state_is_restored():
    big = packb([{"a": [i]} for i in range(2000)] + ["zz"])
    assert gc.isenabled()
    unpackb(big)
    assert gc.isenabled()
    with pytest.raises(ValueError):
        # Framing is sound (the checker passes it); the last str is not
        # UTF-8, so decoding fails late, after many containers were built.
        unpackb(big[:-2] + b"\xff\xff")
    assert gc.isenabled()
    gc.disable()
    try:
        unpackb(big)
        assert not gc.isenabled()  # a caller's choice is left alone
    finally:
        gc.enable()


def test_decoded_containers_are_collectable():
    """Built with the collector paused, the objects are still tracked: a
    cycle the caller makes through them is collected."""
    import weakref

    class Box:
        pass

    out = unpackb(packb([{"x": []} for _ in range(300)]))
    assert all(gc.is_tracked(d) for d in out[:5])
    box = Box()
    out[0]["x"].append(box)
    box.back = out
    ref = weakref.ref(box)
    del out, box
    gc.collect()
    assert ref() is None
