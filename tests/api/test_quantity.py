"""Quantity parsing, canonical form and arithmetic against upstream's resource.Quantity behaviour."""

from fractions import Fraction

import pytest

from kybernetes.api.quantity import FORMAT_ERROR, SUFFIX_ERROR, Quantity, canonical, is_valid


@pytest.mark.parametrize("text,value", [
    ("250m", Fraction(1, 4)),
    ("1Gi", 2**30),
    ("1e3", 1000),
    ("0.5", Fraction(1, 2)),
    ("128974848", 128974848),
    ("129M", 129_000_000),
    ("123Mi", 123 * 2**20),
    ("1.5Gi", 3 * 2**29),
    ("1E", 10**18),
    ("-2k", -2000),
    ("+3", 3),
    (".5", Fraction(1, 2)),
    ("1.", 1),
    ("12e-1", Fraction(6, 5)),
    ("5n", Fraction(5, 10**9)),
    ("7u", Fraction(7, 10**6)),
])
def test_parse_exact_value(text, value):
    assert Quantity.parse(text).value_exact == value


@pytest.mark.parametrize("text,canon", [
    ("1000m", "1"),
    ("1.5Gi", "1536Mi"),
    ("0.1", "100m"),
    ("250m", "250m"),
    ("1Gi", "1Gi"),
    ("1024Mi", "1Gi"),
    ("1000Mi", "1000Mi"),
    ("1.5Ki", "1536"),
    ("0.1Ki", "102400m"),
    ("1e3", "1e3"),
    ("1E3", "1e3"),
    ("1.5e3", "1500"),
    ("12e-1", "1200e-3"),
    ("128974848", "128974848"),
    ("129M", "129M"),
    ("1500", "1500"),
    ("1000", "1k"),
    ("0", "0"),
    ("0Gi", "0"),
    ("-1.5Gi", "-1536Mi"),
    ("0.0000000001", "1n"),  # rounded up to the smallest representable amount
    ("100Ki", "100Ki"),
])
def test_canonical_form(text, canon):
    assert str(Quantity.parse(text)) == canon
    assert canonical(text) == canon
    # canonical strings are fixed points
    assert canonical(canon) == canon


def test_json_numbers_parse_like_strings():
    assert str(Quantity.parse(1)) == "1"
    assert str(Quantity.parse(0.5)) == "500m"
    assert str(Quantity.parse(2048)) == "2048"


def test_binary_values_are_capped_at_int64():
    assert Quantity.parse("8Ei").value() == 2**63 - 1


@pytest.mark.parametrize("bad", ["", " 1", "1 ", "1.1.M", "1+1.0M", "0.1am", "aoeu", "Gi", "-", "1Mb", "abc"])
def test_format_errors(bad):
    with pytest.raises(ValueError) as e:
        Quantity.parse(bad)
    assert str(e.value) == FORMAT_ERROR
    assert not is_valid(bad)


@pytest.mark.parametrize("bad", ["0.1mi", ".5i", "1i", "1e", "-3.01e-"])
def test_suffix_errors(bad):
    with pytest.raises(ValueError) as e:
        Quantity.parse(bad)
    assert str(e.value) == SUFFIX_ERROR


def test_error_message_is_upstream_text():
    assert FORMAT_ERROR == ("quantities must match the regular expression "
                            "'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'")


def test_value_and_milli_value_round_up_away_from_zero():
    assert Quantity.parse("1.5").value() == 2
    assert Quantity.parse("-1.5").value() == -2
    assert Quantity.parse("1").value() == 1
    assert Quantity.parse("250m").milli_value() == 250
    assert Quantity.parse("1.0001m").milli_value() == 2
    assert Quantity.parse("1Gi").value() == 1073741824
    assert Quantity.parse("2").milli_value() == 2000


def test_comparisons_across_formats():
    assert Quantity.parse("1Gi") > Quantity.parse("1G")
    assert Quantity.parse("1000m") == Quantity.parse("1")
    assert Quantity.parse("500m") < Quantity.parse("1")
    assert Quantity.parse("1k") == 1000
    assert Quantity.parse("1k") == "1000"
    assert Quantity.parse("1").cmp("2") == -1
    assert Quantity.parse("2").cmp(Quantity.parse("2000m")) == 0
    assert hash(Quantity.parse("1")) == hash(Quantity.parse("1000m"))
    assert sorted([Quantity.parse(x) for x in ("1Gi", "1", "10M")]) == [Quantity.parse(x)
                                                                       for x in ("1", "10M", "1Gi")]


def test_arithmetic_keeps_receiver_format():
    assert str(Quantity.parse("1") + Quantity.parse("500m")) == "1500m"
    assert str(Quantity.parse("1Gi") - Quantity.parse("512Mi")) == "512Mi"
    assert str(Quantity.parse("0") + Quantity.parse("1Gi")) == "1Gi"  # zero receiver takes the other format
    assert str(-Quantity.parse("1Gi")) == "-1Gi"
    assert str(Quantity.parse("100m") * 3) == "300m"
    total = sum((Quantity.parse(x) for x in ("100m", "200m", "700m")), Quantity(0))
    assert str(total) == "1"
    assert Quantity.parse("1") - Quantity.parse("1") == 0
    assert not Quantity.parse("0")
