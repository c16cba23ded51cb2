"""The lab: local scArches mapping of its own data, its privacy policy and ledger, and its SuperNode."""
