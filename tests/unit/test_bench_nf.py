"""``nfaas bench nf`` at smoke size: the JSON has its fields and the values make sense.

Runs the real experiment (capture written and parsed, compiled and linear classifiers, kernel
loads in network namespaces); no timing thresholds, only consistency.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nfaas.bench.nf import (
    LOADERS,
    capture_batch,
    firewall_classification,
    flow_keys,
    iptables_restore_text,
    kernel_load,
    parse_rule_counts,
)
from nfaas.nf.build import ipv4_checksums_ok, l4_checksums_ok
from nfaas.nf.headers import parse
from nfaas.vnfs.firewall.generate import generate_packets, generate_rules
from nfaas.vnfs.firewall.nft import Ruleset, format_ruleset
from nfaas.vnfs.firewall.rules import Action, Family, PortRange, Rule, RuleTable

RULES = (1, 10, 100)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("results")
    results = firewall_classification(
        RULES, packets=512, repeat=1, linear_max_rules=10, out_dir=out, echo=False
    )
    return results, out


def test_results_are_saved_with_machine_table_and_plot(run: tuple[dict[str, Any], Path]) -> None:
    _, out = run
    saved = json.loads((out / "nf-firewall.json").read_text())
    assert saved["experiment"] == "nf-firewall"
    assert {"cores", "cpu", "kernel", "memory_gib"} <= set(saved["machine"])
    assert saved["parameters"]["rule_counts"] == list(RULES)
    assert [row["rules"] for row in saved["rows"]] == list(RULES)
    assert (out / "nf-firewall.png").stat().st_size > 0
    assert "| rules |" in saved["markdown"] and "nft -f s" in saved["markdown"]
    assert saved["targets"]["evaluated"] is False  # no 10^6 rules in a smoke run


def test_each_row_measures_compile_capture_and_classification(
    run: tuple[dict[str, Any], Path],
) -> None:
    results, _ = run
    for row in results["rows"]:
        assert row["ipv4_rules"] <= row["rules"]
        assert row["compile"]["seconds"] > 0
        assert row["compile"]["peak_mib"] >= row["compile"]["retained_mib"] > 0
        assert row["from_nft_text_s"] > 0
        capture = row["capture"]
        assert capture["packets"] == capture["ipv4_packets"] == 512
        assert capture["roundtrip_ok"]
        for rate in (capture["read"], capture["parse"], row["compiled"], row["compiled_ipv6"]):
            assert rate["ns_per_packet"] > 0 and rate["mpps"] > 0
        assert 0 < row["compiled"]["matched_share"] <= 1
    base = next(r for r in results["rows"] if r["rules"] == 10)
    assert results["ratio_base_rules"] == 10
    assert base["compiled"]["ratio_to_base"] == pytest.approx(1.0)


def test_linear_reference_agrees_and_is_skipped_above_its_limit(
    run: tuple[dict[str, Any], Path],
) -> None:
    rows = {row["rules"]: row for row in run[0]["rows"]}
    for n in (1, 10):
        assert rows[n]["linear"]["agrees"] is True
        assert rows[n]["linear"]["ns_per_packet"] > 0
    assert "skipped" in rows[100]["linear"]


def test_kernel_baselines_load_every_rule(run: tuple[dict[str, Any], Path]) -> None:
    for row in run[0]["rows"]:
        kernel = row["kernel"]
        assert set(kernel) == set(LOADERS)
        assert kernel["nft"]["status"] == "ok"
        assert kernel["nft"]["loaded_rules"] == row["rules"]
        for tool in ("iptables-restore", "iptables-legacy-restore"):
            assert kernel[tool]["status"] == "ok", kernel[tool]
            assert kernel[tool]["loaded_rules"] == row["ipv4_rules"]
        assert all(load["seconds"] > 0 for load in kernel.values())


def test_a_load_past_its_timeout_is_killed_and_its_namespace_removed(tmp_path: Path) -> None:
    path = tmp_path / "rules.nft"
    path.write_text(format_ruleset(Ruleset(rules=list(generate_rules(2000, 5)))))
    before = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    result = kernel_load("nft", path, timeout=0.0)
    assert result["status"] == "timeout" and result["seconds"] is None
    after = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert after.count("nfaas-bench-") == before.count("nfaas-bench-")


def test_capture_frames_parse_back_to_the_keys_with_valid_checksums() -> None:
    table = generate_rules(50, 3)
    keys = generate_packets(table, 300, 4)
    batch = capture_batch(keys)
    headers = parse(batch)
    assert headers.valid.all()
    assert ipv4_checksums_ok(batch, headers).all()
    assert l4_checksums_ok(batch, headers).all()
    parsed = flow_keys(headers)
    for field in ("src4", "dst4", "proto", "sport", "dport"):
        assert np.array_equal(getattr(parsed, field), getattr(keys, field))


def test_iptables_text_is_one_forward_chain_of_the_ipv4_rules() -> None:
    rules = [
        Rule(
            Action.ACCEPT,
            Family.IPV4,
            src=ipaddress.IPv4Network("198.18.0.0/16"),
            proto=6,
            sport=PortRange(1024, 65535),
            dport=PortRange.single(80),
        ),
        Rule(Action.DROP, Family.IPV6, proto=17),
        Rule(Action.REJECT, Family.ANY, proto=47),
    ]
    text = iptables_restore_text(RuleTable.from_rules(rules))
    lines = text.splitlines()
    assert lines[0] == "*filter" and lines[-1] == "COMMIT"
    assert [line for line in lines if line.startswith("-A")] == [
        "-A FORWARD -s 198.18.0.0/16 -p tcp --sport 1024:65535 --dport 80 -j ACCEPT",
        "-A FORWARD -p 47 -j REJECT",
    ]


def test_rule_counts_are_parsed_and_bad_ones_named() -> None:
    assert parse_rule_counts("1, 10,1_000") == [1, 10, 1000]
    with pytest.raises(ValueError, match=r"rule count 2 \('ten'\)"):
        parse_rule_counts("1,ten")
    with pytest.raises(ValueError, match=r"rule count 1 .* at least 1"):
        parse_rule_counts("0")
