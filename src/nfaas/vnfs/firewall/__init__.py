"""Stateless part of the firewall VNF: ordered 5-tuple rules, nftables import/export, classifiers.

`rules` is the rule model, `nft` reads and writes nftables syntax, `classifier` is the compiled
first-match classifier (tuple space search), `linear` the reference scan, `generate` makes
ClassBench-like rule sets and matching traffic for tests and benchmarks.
"""
