"""Harness-owned checks: parsing asserts on the host, decoding program-side values, comparing."""

import pytest

from lorasoups.eval.checks import CheckError, Undecodable, check_passes, decode, describe_value, parse_check


def _worker_module():
    """The worker file (not importable as part of lorasoups: it reads its config from argv)."""
    import importlib.util
    import sys
    from pathlib import Path

    import lorasoups.eval.sandbox as sbx

    spec = importlib.util.spec_from_file_location("_w", Path(sbx.__file__).with_name("_sandbox_worker.py"))
    mod = importlib.util.module_from_spec(spec)
    argv, sys.argv = sys.argv, ["worker", "{}"]
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.argv = argv
    return mod


_W = _worker_module()


def _enc(v):
    """The program side's encoding (the worker's ``_encode``)."""
    return _W._encode(v)


def test_parse_check_splits_compare_and_refuses_non_asserts():
    c = parse_check("assert f(1, 2) == (3, [4])  ")
    assert c.op == "Eq" and c.exprs == ("f(1, 2)", "(3, [4])")
    assert parse_check("assert not g(1)").op == "not"
    assert parse_check("assert math.isclose(f(1), 2.5)").op == "truth"
    assert parse_check("assert 1 < x < 3").op == "truth"  # chained: the whole expression
    for bad in ("x = 1", "assert f(1)\nassert g(2)", "assert (", ""):
        with pytest.raises(CheckError):
            parse_check(bad)


@pytest.mark.parametrize("v", [None, True, 3, -2 ** 200, 2.5, float("inf"), 1 + 2j, "é\n", b"\x00\xff",
                               [1, (2, "a")], {1: {"x": [None]}}, {3, 1, 2}, frozenset({"a"}), ()])
def test_roundtrip_of_builtins(v):
    assert decode(_enc(v)) == v and type(decode(_enc(v))) is type(v)


def test_non_builtins_and_malformed_data_fail():
    class I(int):
        def __eq__(self, o):
            return True

    with pytest.raises(Undecodable):
        decode(_enc(I(3)))
    with pytest.raises(Undecodable):
        decode(_enc([object()]))
    for bad in ({"t": "int", "v": 3}, {"t": "float", "v": "x"}, {"t": "dict", "v": [[1]]}, "s", None, {"t": "zzz"}):
        with pytest.raises(Undecodable):
            decode(bad)
    c = parse_check("assert f(1) == 3")
    assert check_passes(c, [_enc(I(3)), _enc(3)])[0] is False
    assert check_passes(c, [_enc(3), _enc(3)]) == (True, None)
    assert check_passes(c, [_enc(3)])[0] is False  # a value missing
    assert check_passes(parse_check("assert f(1) is None"), [_enc(None), _enc(None)])[0]
    assert not check_passes(parse_check("assert f(1) is True"), [_enc(1), _enc(True)])[0]


def test_describe_value_numbers_only_for_exact_numbers():
    assert describe_value(_enc(42))["number"] == 42.0
    assert describe_value(_enc("42"))["number"] is None and describe_value(_enc("42"))["str"] == "42"
    assert describe_value({"t": "other", "type": "I", "repr": "3"})["number"] is None
    assert describe_value(_enc(float("nan")))["number"] is None
