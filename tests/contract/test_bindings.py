"""The contract covers every vendor: the bindings match the one list of vendors."""

from __future__ import annotations

from gateway.vendors import VENDORS

from .bindings import BINDINGS


def test_every_vendor_has_a_binding() -> None:
    missing = sorted(set(VENDORS) - set(BINDINGS))
    assert not missing, (
        f"vendors without a contract binding in tests/contract/bindings.py: {missing}"
    )
    stray = sorted(set(BINDINGS) - set(VENDORS))
    assert not stray, f"bindings for vendors gateway.vendors.VENDORS does not name: {stray}"
    for name, binding in BINDINGS.items():
        assert binding.vendor == name
        assert binding.__doc__, f"the {name} binding must say how its vendor meets the contract"
