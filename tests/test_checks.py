"""User-given numbers and their text forms."""

import math

import pytest

from asmix import AsmixError
from asmix.checks import canonical_norm, check_finite, check_norm, parse_number, threat_model_name
from asmix.experiments.certify import parse_radii


@pytest.mark.parametrize(
    "text, value",
    [("8/255", 8 / 255), (" 0.5 ", 0.5), ("1e-3", 1e-3), ("36 / 255", 36 / 255), ("2", 2.0), ("-1/4", -0.25)],
)
def test_numbers_and_fractions(text, value):
    assert parse_number(text, "--eps") == value


@pytest.mark.parametrize("text", ["x", "8/", "/255", "1/0", "", "8/255/2", "0.5.1"])
def test_unreadable_numbers_name_the_option(text):
    with pytest.raises(AsmixError, match=f"--eps must be a number or a fraction like 8/255, got {text!r}"):
        parse_number(text, "--eps")


def test_non_finite_values_parse_but_do_not_check():
    assert math.isnan(parse_number("nan")) and parse_number("inf") == math.inf  # configs refuse them
    with pytest.raises(AsmixError, match="eps must be a finite number, got nan"):
        check_finite(parse_number("nan"), "eps")
    with pytest.raises(AsmixError, match="sigma must be a finite number, got -inf"):
        check_finite(float("-inf"), "sigma")
    assert check_finite("0.25", "sigma") == 0.25


def test_norms_in_any_case():
    assert [canonical_norm(text) for text in ("Linf", "L2", " LINF ", "l2")] == ["linf", "l2", "linf", "l2"]
    assert check_norm("Linf") == "linf"
    with pytest.raises(AsmixError, match="norm must be one of linf, l2, got 'L1'"):
        check_norm("L1")


def test_threat_model_names_as_the_autoattack_package_spells_them():
    assert threat_model_name("linf") == "Linf" and threat_model_name("l2") == "L2"
    with pytest.raises(AsmixError):
        threat_model_name("l1")


def test_radii_accept_fractions():
    assert parse_radii("0, 36/255,0.5,0") == (0.0, 36 / 255, 0.5)
    with pytest.raises(AsmixError, match="each radius must be a number or a fraction"):
        parse_radii("0,a")
    with pytest.raises(AsmixError, match="no radii"):
        parse_radii(" , ")
