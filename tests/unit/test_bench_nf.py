"""``nfaas bench nf`` at smoke size: the JSON has its fields and the values make sense.

Runs the real experiment (capture written and parsed, compiled and linear classifiers, kernel
loads in network namespaces, live forwarding A -> M -> B through the kernel and our graphs);
no timing thresholds, only consistency.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nfaas.bench import nf_live, nf_vnfs
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


# --- live forwarding --------------------------------------------------------------------------

LIVE_RULES = (1, 10)
OURS = ("ours", "ours-stateless", "ours (burst 4096)", "ours-stateless (burst 4096)")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")


def _namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("live")
    results = nf_live.live_forwarding(
        LIVE_RULES,
        seconds=0.3,
        warmup=0.1,
        latency_seconds=0.05,
        steps=1,
        out_dir=out,
        echo=False,
    )
    return results, out


@needs_root
def test_live_results_are_saved_with_a_row_per_rule_count(
    live: tuple[dict[str, Any], Path],
) -> None:
    _, out = live
    saved = json.loads((out / "nf-live.json").read_text())
    assert saved["experiment"] == "nf-live"
    assert [row["rules"] for row in saved["rows"]] == list(LIVE_RULES)
    assert (out / "nf-live.png").stat().st_size > 0
    assert "sustained kpps" in saved["markdown"] and "p99 µs" in saved["markdown"]
    assert set(saved["targets"]["by_path"]) == set(OURS)
    # every namespace the run made (named after this process) is gone again
    assert f"nfb-{os.getpid()}-" not in _namespaces()


@needs_root
def test_every_path_forwards_what_the_rules_accept(
    live: tuple[dict[str, Any], Path],
) -> None:
    for row in live[0]["rows"]:
        assert set(row["paths"]) == {*nf_live.KERNEL_TOOLS, *OURS}
        assert 0 < row["accept_share"] <= 1
        for name, result in row["paths"].items():
            assert result["status"] == "ok", (row["rules"], name, result)
            rate = result["rate"]
            assert rate["sent"] > 0 and rate["processed"] > 0, (name, rate)
            assert 0 < rate["delivered"] <= rate["sent"], (name, rate)
            # what passes is what the rules accept (the kernel drops nothing else here)
            assert rate["delivered_share"] == pytest.approx(row["accept_share"], abs=0.1)
            assert result["router"] is (name in nf_live.KERNEL_TOOLS)
            assert 0 < rate["forwarder_cpu_busy"] <= 1
            latency = result["latency"]
            assert latency["received"] > 0 and latency["p50_us"] > 0, (name, latency)
            assert latency["p99_us"] >= latency["p50_us"]
        assert row["paths"]["nft"]["load_s"] > 0
        drops = row["paths"]["ours"]["nf_drops"]  # what the rules refused, by drop or reject
        assert drops.get("rule", 0) + drops.get("reject", 0) > 0 or row["accept_share"] == 1


@needs_root
def test_vnfs_are_measured_in_batches_and_live() -> None:
    rows = nf_vnfs.vnf_rows(
        seconds=0.3, warmup=0.1, latency_seconds=0.05, steps=1, repeat=1, flows=2048
    )
    by_name = {row["vnf"]: row for row in rows}
    assert {"forward (no NF)", "lb (Maglev)", "nat (SNAT)", "tof (GTP-U offload)"} <= set(by_name)
    for row in rows:
        assert row["status"] == "ok", row
        batch = row["batch"]
        assert batch["packets"] == 2048
        assert batch["new"]["mpps"] > 0 and batch["warm"]["mpps"] > 0
        assert batch["forwarded_share"] > 0
        if "live" in row:
            assert row["live"]["status"] == "ok", row["live"]
            assert row["live"]["rate"]["delivered"] > 0, row
    assert "live" not in by_name["firewall (1,000 rules)"]  # it has its own live table
    assert by_name["lb (Maglev)"]["batch"]["forwarded_share"] == 1.0


def test_live_frames_carry_the_keys_a_marker_and_valid_checksums() -> None:
    table = generate_rules(50, 3)
    keys = generate_packets(table, 300, 4)
    frames = nf_live.live_frames(keys, nf_live.SINK_MAC)
    assert (frames.lengths == nf_live.FRAME_BYTES).all()
    assert (frames.read_uint(frames.lengths - 4, 4) == nf_live.RATE_MARKER).all()
    headers = parse(frames)
    assert ipv4_checksums_ok(frames, headers).all() and l4_checksums_ok(frames, headers).all()
    parsed = flow_keys(headers)
    for field in ("src4", "dst4", "proto", "sport", "dport"):
        assert np.array_equal(getattr(parsed, field), getattr(keys, field))
    probes = nf_live.probe_frames(keys, [3, 5], 5, nf_live.SINK_MAC)
    assert probes.read_uint(probes.lengths - 8, 4).tolist() == [0, 1, 2, 3, 4]
    assert (probes.read_uint(probes.lengths - 4, 4) == nf_live.PROBE_MARKER).all()
    assert l4_checksums_ok(probes, parse(probes)).all()
    assert flow_keys(parse(probes)).dport.tolist() == [keys.dport[i] for i in (3, 5, 3, 5, 3)]
