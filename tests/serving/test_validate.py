"""tapestry.serving.validate: the checks every stage runs on its request tensors, without Triton."""
import re

import numpy as np
import pytest

from tapestry.serving import validate as v
from tapestry.serving.stage import RequestError, bytes_array


def _bytes(*values) -> np.ndarray:
    return np.array(list(values), dtype=np.object_)


def test_tenant_accepts_exactly_the_served_tenant():
    assert v.tenant({"TENANT": bytes_array(["acme"])}, "acme") == "acme"


@pytest.mark.parametrize("sent, message", [
    (b"other", "tenant 'other' is not served by this model repository"),
    (b"acme ", "TENANT 'acme ' is not a valid tenant id"),             # no strip: another tenant
    (b"ACME", "tenant 'ACME' is not served"),                        # no case folding
    ("\u0430cme".encode(), "TENANT '\\u0430cme' is not a valid tenant id"),  # Cyrillic a, shown escaped
    (b"../acme", "TENANT '../acme' is not a valid tenant id"),
    (b"acme/../other", "is not a valid tenant id"),
    (b"a\\b", "is not a valid tenant id"),
    (b"", "TENANT '' is not a valid tenant id"),
    (b"acme\n", "TENANT 'acme\\n' is not a valid tenant id"),
    (b"x" * 100_000, "... (100000 characters) is not a valid tenant id"),
    (b"\xff\xfe", "TENANT is not valid UTF-8: b'\\xff\\xfe'"),
])
def test_tenant_refuses_anything_else_with_a_clear_message(sent, message):
    with pytest.raises(RequestError, match=None) as info:
        v.tenant({"TENANT": _bytes(sent)}, "acme")
    assert message in str(info.value)
    assert len(str(info.value)) < 200  # a huge or hostile value is never echoed whole


@pytest.mark.parametrize("tensors, message", [
    ({}, "missing input tensor TENANT"),
    ({"TENANT": np.array([1], np.int32)}, "TENANT must be BYTES, got int32"),
    ({"TENANT": _bytes(b"acme", b"acme")}, "TENANT has 2 elements, at most 1"),
    ({"TENANT": _bytes()}, "TENANT must have at least 1 element"),
    ({"TENANT": np.array([[b"acme"]], dtype=np.object_)}, "TENANT must be a 1-D tensor, got shape [1, 1]"),
])
def test_tensor_shape_and_kind_are_checked(tensors, message):
    with pytest.raises(RequestError, match=re.escape(message)) as info:
        v.tenant(tensors, "acme")
    assert message in str(info.value)


@pytest.mark.parametrize("value, message", [
    (b"", "USER_ID is empty"),
    (b"   ", "USER_ID is empty"),
    (b"\xc3\x28", "USER_ID is not valid UTF-8"),
    ("\udcff".encode("utf-8", "surrogatepass"), "USER_ID is not valid UTF-8"),  # a lone surrogate (JSON "\udcff")
    (b"u\x00x", "USER_ID contains control or invisible characters: 'u\\x00x'"),
    (b"u\x1b[31m", "USER_ID contains control or invisible characters"),
    ("u\u200bx".encode(), "USER_ID contains control or invisible characters: 'u\\u200bx'"),  # zero-width space
    ("u\u202ex".encode(), "contains control or invisible"),  # right-to-left override
    ("u\u2028x".encode(), "contains control or invisible"),  # line separator
    ("u\ufffd".encode(), "contains control or invisible"),  # bytes that did not decode upstream
    (b"7" * 257, "USER_ID is 257 characters long, at most 256"),
    (5, "USER_ID must hold strings, got int"),
])
def test_bad_ids_are_request_errors(value, message):
    with pytest.raises(RequestError, match=re.escape(message)) as info:
        v.single_text({"USER_ID": _bytes(value)}, "USER_ID")
    assert message in str(info.value)


def test_id_limits_are_the_etl_id_policy():
    from tapestry.etl import schema

    assert v.MAX_ID_CHARS == schema.MAX_ID_LENGTH


def test_ids_are_stripped_and_unicode_ids_are_fine():
    assert v.single_text({"USER_ID": _bytes(" u1 ")}, "USER_ID") == "u1"
    assert v.single_text({"USER_ID": _bytes("Zoë-δ".encode())}, "USER_ID") == "Zoë-δ"


def test_exclude_list_allows_empty_strings_and_is_bounded():
    assert v.texts({"X": _bytes(b"", b"a")}, "X", max_size=3) == ["", "a"]
    assert v.texts({"X": _bytes()}, "X", max_size=3) == []
    with pytest.raises(RequestError, match="X has 4 elements, at most 3 are allowed"):
        v.texts({"X": _bytes(b"a", b"b", b"c", b"d")}, "X", max_size=3)
    with pytest.raises(RequestError, match="X is not valid UTF-8"):
        v.texts({"X": _bytes(b"a", b"\xff")}, "X", max_size=3)


def test_item_indices_must_be_integers_in_the_catalogue():
    assert v.item_indices({"S": np.array([0, 4])}, "S", 5).tolist() == [0, 4]
    with pytest.raises(RequestError, match=r"S holds 2 item index\(es\) outside 0..4, e.g. 5"):
        v.item_indices({"S": np.array([0, 5, -1])}, "S", 5)
    with pytest.raises(RequestError, match="S must be an integer type, got float32"):
        v.item_indices({"S": np.array([1.0], np.float32)}, "S", 5)
    with pytest.raises(RequestError, match="S has 3 elements, at most 2"):
        v.item_indices({"S": np.array([1, 2, 3])}, "S", 5, max_size=2)


def test_floats_must_be_finite_and_of_the_expected_size():
    assert v.floats({"E": np.ones(3, np.float64)}, "E", size=3).dtype == np.float32
    with pytest.raises(RequestError, match="E must have at least 3 element"):
        v.floats({"E": np.ones(2, np.float32)}, "E", size=3)
    with pytest.raises(RequestError, match="E has 4 elements, at most 3"):
        v.floats({"E": np.ones(4, np.float32)}, "E", size=3)
    with pytest.raises(RequestError, match=r"E holds 2 non-finite value\(s\)"):
        v.floats({"E": np.array([np.nan, np.inf, 1], np.float32)}, "E")
    assert v.floats({"E": np.array([-np.inf], np.float32)}, "E", allow_neg_inf=True).tolist() == [-np.inf]
    with pytest.raises(RequestError, match="non-finite"):
        v.floats({"E": np.array([np.inf], np.float32)}, "E", allow_neg_inf=True)


@pytest.mark.parametrize("k", [0, -1, 51, 10**9, -(2**31)])
def test_k_out_of_range(k):
    with pytest.raises(RequestError, match=f"K must be between 1 and 50, got {k}"):
        v.top_k({"K": np.array([k], np.int32)}, 50)


def test_k_must_be_one_integer():
    assert v.top_k({"K": np.array([7], np.int32)}, 50) == 7
    with pytest.raises(RequestError, match="K must be an integer type"):
        v.top_k({"K": np.array([1.5], np.float32)}, 50)
    with pytest.raises(RequestError, match="K has 2 elements"):
        v.top_k({"K": np.array([1, 2], np.int32)}, 50)


def test_shown_escapes_and_cuts():
    assert v.shown("a\u0430") == "'a\\u0430'"
    assert v.shown(b"\x00") == "b'\\x00'"
    long = v.shown("y" * 1000)
    assert long.endswith("... (1000 characters)") and len(long) < 80
