import pytest

from lib.book.report import format_table


def test_table_is_aligned_and_rounds_floats_only():
    text = format_table(["name", "value", "n"], [["a", 3.14159, 12], ["long name", 0.000123456, True]])
    lines = text.splitlines()
    assert lines == ["     name     value     n",
                     "        a      3.14    12",
                     "long name  0.000123  True"]
    assert len({len(line) for line in lines}) == 1


def test_table_rejects_ragged_rows_and_bad_digits():
    with pytest.raises(ValueError, match="row 1 has 1 cells"):
        format_table(["a", "b"], [[1]])
    with pytest.raises(TypeError, match="digits"):
        format_table(["a"], [[1.0]], digits=2.5)
