"""The connector contract suite: written once (test_contract.py), bound per vendor (bindings.py)."""
