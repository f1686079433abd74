"""Tests of the compare-torch command line -> CompareOptions and its per-arch registry.

The end-to-end runs against the official code are in parity_test.py (they need a checkout)."""

import dataclasses

import numpy as np
import pytest

from hfpl_jax import models, parity


def test_flags_become_typed_options():
    options = parity.parse_options(["--reference", "/ref", "--arch", "affinity", "--size", "75x61",
                                    "--batch", "3", "--grad-tol", "2e-3", "--conditioning",
                                    "--conv-impl", "dot", "--json", "out.json"])  # fmt: skip
    assert options == parity.CompareOptions(
        reference="/ref", arch="affinity", size=(75, 61), batch=3, grad_tol=2e-3,
        conditioning=True, conv_impl="dot", json="out.json",
    )  # fmt: skip
    assert options.np_dtype is np.float32
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.arch = "seam"
    defaults = parity.parse_options(["--reference", "/ref"])
    assert defaults == parity.CompareOptions(reference="/ref")
    assert (defaults.arch, defaults.size, defaults.forward_tol) == ("seam", (64, 64), 1e-4)
    assert parity.CompareOptions(reference="/ref", float64=True).np_dtype is np.float64


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--batch", "0"], "--batch must be >= 1"),
        (["--conditioning", "--float64"], "--conditioning compares float32 with float64"),
        (["--arch", "resnet50_cam"], "invalid choice"),
        (["--size", "8"], "expected H or HxW >= 16"),
    ],
)
def test_bad_flags_exit_with_the_reason(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        parity.parse_options(["--reference", "/ref", *argv])
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_options_validate_without_argparse():
    with pytest.raises(ValueError, match="--arch must be one of .*'resnet50_cam'"):
        parity.CompareOptions(reference="/ref", arch="resnet50_cam")
    with pytest.raises(ValueError, match="--size"):
        parity.CompareOptions(reference="/ref", size=(8, 64))


def test_every_compared_arch_is_a_registered_model():
    assert parity.ARCHS == tuple(parity.COMPARISONS)
    assert set(parity.ARCHS) <= set(models.SPECS)
    for comparison in parity.COMPARISONS.values():
        assert callable(comparison.build_reference) and callable(comparison.run)
