from miningproxy.excgroups import first_leaf, leaves


def test_leaves_flatten_nested_groups_in_order():
    a, b, c = ValueError("a"), KeyError("b"), OSError("c")
    group = BaseExceptionGroup("outer", [a, ExceptionGroup("inner", [b, c])])
    assert leaves(group) == [a, b, c]
    assert leaves(a) == [a]


def test_first_leaf_honours_kind_priority():
    a, c = ValueError("a"), OSError("c")
    group = ExceptionGroup("g", [a, ExceptionGroup("inner", [c])])
    assert first_leaf(group, OSError, ValueError) is c
    assert first_leaf(group, (KeyError, ValueError)) is a
    assert first_leaf(group, KeyError) is None
