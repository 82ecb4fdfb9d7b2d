"""``nfaas bench nf``: the firewall VNF's classifier from 1 to 10^6 rules, with kernel baselines.

Seed 004's methodology: the same firewall measured with 1, 10, 100, 1,000, 10,000, 100,000 and
1,000,000 rules. For each rule count, in one run:

- the ruleset: ``generate_rules`` (seeded, ClassBench-like, a share of IPv6 rules);
- our compile time (``Classifier.compile`` from the rule columns, median of a few runs) and its
  memory (tracemalloc: peak during the compile and what the compiled classifier keeps);
  "from nft text" adds ``parse_nft`` of the nftables file the kernel baseline loads;
- a capture: IPv4 frames for ``generate_packets`` built with ``nfaas.nf.build``, written with
  ``nfaas.nf.pcap``, read back and parsed with ``nfaas.nf.headers.parse`` into ``FlowKeys``;
  read, parse and classify are timed separately, on one core (numpy runs these operations
  single-threaded); the compiled classifier's cost per packet and its ratio to the 10-rule cost;
- the linear reference on the same packets (only up to 10,000 rules: it is O(rules) per packet);
- the kernel's *load* times, each in a fresh network namespace: ``nft -f`` of the same ruleset,
  and ``iptables-restore`` / ``iptables-legacy-restore`` of one linear FORWARD chain holding the
  rules that apply to IPv4; with the loader's peak RSS (the kernel's own memory is not measured).

Live forwarding through network namespaces (this firewall, nftables and iptables in the
kernel) is `nfaas.bench.nf_live`; batch throughput of the other VNFs is `nfaas.bench.nf_vnfs`.
"""

from __future__ import annotations

import gc
import ipaddress
import itertools
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nfaas.bench.report import RESULTS, markdown, print_table, save
from nfaas.nf.batch import PacketBatch
from nfaas.nf.build import (
    TCP_SYN,
    ethernet,
    icmp_echo_frame,
    ipv4,
    set_ipv4_dst,
    set_ipv4_src,
    set_l4_dport,
    set_l4_sport,
    tcp_frame,
    udp_frame,
)
from nfaas.nf.headers import Headers, parse
from nfaas.nf.pcap import read_capture_all, write_pcap
from nfaas.vnfs.firewall.classifier import Classifier, FlowKeys
from nfaas.vnfs.firewall.generate import generate_packets, generate_rules
from nfaas.vnfs.firewall.linear import LinearClassifier
from nfaas.vnfs.firewall.nft import Ruleset, format_ruleset, parse_nft
from nfaas.vnfs.firewall.rules import Action, RuleTable

RULE_COUNTS = (1, 10, 100, 1_000, 10_000, 100_000, 1_000_000)
QUICK_RULE_COUNTS = (1, 10, 100)
PACKETS = 65536
QUICK_PACKETS = 4096
REPEAT = 5
QUICK_REPEAT = 3
LINEAR_MAX_RULES = 10_000
LOAD_TIMEOUT_S = 300.0
#: below this many rules kernel loads are repeated (median); above, one load each
LOAD_REPEAT_MAX_RULES = 10_000
#: loaded rules are counted back from the kernel up to this many rules
COUNT_LOADED_MAX_RULES = 10_000
RULE_SEED = 1
PACKET_SEED = 2
IPV6_SHARE = 0.2
BASE_RULES = 10  # the per-packet cost ratio is against this rule count
MIB = 1024 * 1024
MEMORY_METHOD = (
    "tracemalloc (numpy reports its buffers): peak = most memory allocated at once during "
    "Classifier.compile; retained = what is still allocated while the compiled classifier lives"
)

#: kernel baselines: the loader command (the file is appended) and how to list what it loaded
LOADERS: dict[str, tuple[list[str], list[str]]] = {
    "nft": (["nft", "-f"], ["nft", "list", "chain", "inet", "nfaas", "forward"]),
    "iptables-restore": (["iptables-restore"], ["iptables-save", "-t", "filter"]),
    "iptables-legacy-restore": (
        ["iptables-legacy-restore"],
        ["iptables-legacy-save", "-t", "filter"],
    ),
}
_IPTABLES_TARGETS = {0: "ACCEPT", 1: "DROP", 2: "REJECT"}
_IPTABLES_PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp"}
_netns_serial = itertools.count()


def parse_rule_counts(text: str) -> list[int]:
    """Rule counts from "1,10,100" (underscores allowed); raises ValueError naming the bad one."""
    counts = []
    for position, item in enumerate(text.split(","), start=1):
        token = item.strip()
        try:
            value = int(token)
        except ValueError:
            raise ValueError(f"rule count {position} ({token!r}) is not an integer") from None
        if value < 1:
            raise ValueError(f"rule count {position} ({value}) must be at least 1")
        counts.append(value)
    return counts


# --- the capture ----------------------------------------------------------------------------


def _template(proto: int) -> bytes:
    """One frame of protocol `proto` whose addresses and ports are rewritten per packet."""
    src, dst = "198.18.0.1", "198.18.0.2"
    if proto == 6:
        return tcp_frame(src, dst, 1024, 80, flags=TCP_SYN)
    if proto == 17:
        return udp_frame(src, dst, 1024, 9)
    if proto == 1:
        return icmp_echo_frame(src, dst)
    return ethernet(ipv4(src, dst, proto, bytes(8)))


def capture_batch(
    keys: FlowKeys,
    start_ns: int = 0,
    gap_ns: int = 1000,
    template: Callable[[int], bytes] = _template,
) -> PacketBatch:
    """IPv4 frames carrying the 5-tuples of `keys`, with valid checksums.

    Built from one template frame per protocol (`template(proto)`: any addresses and ports,
    the payload and MAC addresses every frame of that protocol gets), then addresses and
    ports are rewritten for the whole batch with `nfaas.nf.build`'s rewriters (incremental
    checksum updates).
    """
    if keys.src4 is None or keys.dst4 is None:
        raise ValueError("capture_batch needs IPv4 flow keys (src4 and dst4)")
    n = len(keys)
    templates = {int(p): template(int(p)) for p in np.unique(keys.proto)}
    width = max((len(t) for t in templates.values()), default=0)
    frames = np.zeros((n, width), np.uint8)
    lengths = np.zeros(n, np.int64)
    for proto, frame in templates.items():
        rows = keys.proto == proto
        frames[rows, : len(frame)] = np.frombuffer(frame, np.uint8)
        lengths[rows] = len(frame)
    batch = PacketBatch.from_array(frames, lengths)
    headers = parse(batch)
    set_ipv4_src(batch, headers, keys.src4)
    set_ipv4_dst(batch, headers, keys.dst4)
    set_l4_sport(batch, headers, keys.sport)
    set_l4_dport(batch, headers, keys.dport)
    batch.timestamps_ns = start_ns + np.arange(n, dtype=np.int64) * gap_ns
    return batch


def flow_keys(headers: Headers) -> FlowKeys:
    """The IPv4 5-tuples of the valid IPv4 packets of a parsed batch."""
    v4 = headers.valid & (headers.ip_version == 4)
    h = headers if v4.all() else headers.select(np.flatnonzero(v4))
    return FlowKeys.ipv4(h.ipv4_src, h.ipv4_dst, h.protocol, h.sport, h.dport)


def _same_keys(a: FlowKeys, b: FlowKeys) -> bool:
    fields = ("src4", "dst4", "proto", "sport", "dport")
    return len(a) == len(b) and all(
        np.array_equal(np.asarray(getattr(a, f)), np.asarray(getattr(b, f))) for f in fields
    )


# --- timing ---------------------------------------------------------------------------------


def _times(action: Callable[[], object], repeat: int, warmup: int = 1) -> list[float]:
    """Wall times (s) of `repeat` calls after `warmup` untimed ones, with the collector off."""
    for _ in range(warmup):
        action()
    gc.collect()
    gc.disable()
    try:
        samples = []
        for _ in range(repeat):
            started = time.perf_counter()
            action()
            samples.append(time.perf_counter() - started)
        return samples
    finally:
        gc.enable()


def _rate(samples: list[float], packets: int) -> dict[str, Any]:
    median = statistics.median(samples)
    return {
        "ns_per_packet": median * 1e9 / packets if packets else None,
        "mpps": packets / median / 1e6 if packets and median > 0 else None,
        "runs_s": samples,
    }


def compile_memory(table: RuleTable) -> dict[str, float]:
    """Peak and retained memory (MiB) of `Classifier.compile(table)`, by tracemalloc."""
    gc.collect()
    tracemalloc.start()
    try:
        classifier = Classifier.compile(table)
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del classifier
    return {"peak_mib": peak / MIB, "retained_mib": current / MIB}


def _table_mib(table: RuleTable) -> float:
    return sum(getattr(table, name).nbytes for name in RuleTable.__dataclass_fields__) / MIB


# --- kernel baselines -----------------------------------------------------------------------


def _dotted(value: int) -> str:
    return str(ipaddress.IPv4Address(value))


def _iptables_ports(flag: str, lo: int, hi: int) -> str:
    if lo < 0:
        return ""
    return f" {flag} {lo}" if lo == hi else f" {flag} {lo}:{hi}"


def iptables_restore_text(table: RuleTable, policy: Action = Action.ACCEPT) -> str:
    """An `iptables-restore` file: the rules that apply to IPv4 as one linear FORWARD chain.

    IPv4 rules and family-independent rules (no address match) are kept, in order; IPv6 rules
    are left out (they belong to ip6tables).
    """
    if policy is Action.REJECT:
        raise ValueError("a chain policy is ACCEPT or DROP, not REJECT")
    rows = np.flatnonzero((table.family == 0) | (table.family == 4))
    t = table.take(rows)
    columns = [
        getattr(t, name).tolist()
        for name in (
            "action",
            "src_lo",
            "src_len",
            "dst_lo",
            "dst_len",
            "proto",
            "sport_lo",
            "sport_hi",
            "dport_lo",
            "dport_hi",
        )
    ]
    policy_name = _IPTABLES_TARGETS[policy.code]
    lines = [
        "*filter",
        ":INPUT ACCEPT [0:0]",
        f":FORWARD {policy_name} [0:0]",
        ":OUTPUT ACCEPT [0:0]",
    ]
    for action, src, src_len, dst, dst_len, proto, sp_lo, sp_hi, dp_lo, dp_hi in zip(
        *columns, strict=True
    ):
        rule = "-A FORWARD"
        if src_len:
            rule += f" -s {_dotted(src)}/{src_len}"
        if dst_len:
            rule += f" -d {_dotted(dst)}/{dst_len}"
        if proto >= 0:
            rule += f" -p {_IPTABLES_PROTOCOLS.get(proto, str(proto))}"
        rule += _iptables_ports("--sport", sp_lo, sp_hi) + _iptables_ports("--dport", dp_lo, dp_hi)
        lines.append(f"{rule} -j {_IPTABLES_TARGETS[action]}")
    lines += ["COMMIT", ""]
    return "\n".join(lines)


def _count_loaded(tool: str, listing: str) -> int:
    """Rules in a listing of the chain (`nft list chain`) or of the table (`iptables-save`)."""
    if tool == "nft":
        framing = ("table ", "chain ", "type ", "}")
        return sum(
            1
            for line in listing.splitlines()
            if line.strip() and not line.strip().startswith(framing)
        )
    return sum(1 for line in listing.splitlines() if line.startswith("-A FORWARD "))


def _resident_high_water_kib(pid: int) -> int | None:
    """VmHWM of a live process (its own peak RSS), None once it has exited."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class _Watch:
    """Samples a child's peak RSS while it runs and kills it (SIGKILL) after a timeout.

    The main thread waits for the child's exit without reaping it (WNOWAIT), so its pid stays
    ours until `stop`; the watcher never signals or reads a pid that could have been reused.
    rusage's ru_maxrss is no use here: a child started with vfork inherits the parent's peak.
    """

    SAMPLE_S = 0.005

    def __init__(self, process: subprocess.Popen[bytes], timeout: float) -> None:
        self.process = process
        self.deadline = time.monotonic() + timeout
        self.lock = threading.Lock()
        self.done = False
        self.killed = False
        self.peak_kib: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            with self.lock:
                if self.done:
                    return
                sample = _resident_high_water_kib(self.process.pid)
                if sample is not None:
                    self.peak_kib = max(self.peak_kib or 0, sample)
                if time.monotonic() > self.deadline and not self.killed:
                    self.killed = True
                    # os.kill, not Popen.kill: that would poll, and could reap, the child
                    os.kill(self.process.pid, signal.SIGKILL)
            time.sleep(self.SAMPLE_S)

    def stop(self) -> None:
        with self.lock:
            self.done = True
        self.thread.join()


def _wait_with_timeout(
    process: subprocess.Popen[bytes], timeout: float
) -> tuple[bool, int, int | None]:
    """(timed out?, exit code, sampled peak RSS in KiB) of `process`."""
    watch = _Watch(process, timeout)
    try:
        os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)
    finally:
        watch.stop()
    return watch.killed, process.wait(), watch.peak_kib


def kernel_load(tool: str, path: Path, timeout: float, count: bool = False) -> dict[str, Any]:
    """Load the file at `path` with `tool` (a key of LOADERS) in a fresh network namespace.

    Returns the wall time of the load, the loader's peak RSS, and with `count` the number of
    rules the kernel then lists; status is ok, timeout, error or unavailable.
    """
    command, listing = LOADERS[tool]
    if os.geteuid() != 0 or not shutil.which(command[0]) or not shutil.which("ip"):
        return {"status": "unavailable", "reason": f"needs root, ip and {command[0]}"}
    name = f"nfaas-bench-{os.getpid()}-{next(_netns_serial)}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        with tempfile.TemporaryFile() as errors:
            started = time.perf_counter()
            process = subprocess.Popen(
                ["ip", "netns", "exec", name, *command, str(path)],
                stdout=subprocess.DEVNULL,
                stderr=errors,
            )
            timed_out, code, peak_kib = _wait_with_timeout(process, timeout)
            seconds = time.perf_counter() - started
            errors.seek(0)
            stderr = errors.read(2000).decode(errors="replace")
        result: dict[str, Any] = {
            "seconds": seconds,
            # sampled every few ms: None when the load ended before the first sample
            "peak_rss_mib": None if peak_kib is None else peak_kib / 1024,
        }
        if timed_out:
            return {**result, "status": "timeout", "seconds": None, "timeout_s": timeout}
        if code != 0:
            return {**result, "status": "error", "exit_code": code, "stderr": stderr}
        result["status"] = "ok"
        if count:
            listed = subprocess.run(
                ["ip", "netns", "exec", name, *listing], capture_output=True, text=True, check=True
            )
            result["loaded_rules"] = _count_loaded(tool, listed.stdout)
        return result
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False, capture_output=True)


def tool_versions() -> dict[str, str]:
    """`--version` of each loader (iptables says which backend: nf_tables or legacy)."""
    versions = {}
    for tool, (command, _) in LOADERS.items():
        if not shutil.which(command[0]):
            versions[tool] = "not installed"
            continue
        done = subprocess.run([command[0], "--version"], capture_output=True, text=True)
        versions[tool] = (done.stdout or done.stderr).strip()
    return versions


def _kernel_loads(
    table: RuleTable, ruleset_text: str, workdir: Path, repeat: int, timeout: float
) -> dict[str, Any]:
    files = {"nft": workdir / "rules.nft"}
    files["nft"].write_text(ruleset_text)
    iptables = workdir / "rules.iptables"
    iptables.write_text(iptables_restore_text(table))
    files["iptables-restore"] = files["iptables-legacy-restore"] = iptables
    n = len(table)
    runs = repeat if n <= LOAD_REPEAT_MAX_RULES else 1
    loads: dict[str, Any] = {}
    for tool, path in files.items():
        first = kernel_load(tool, path, timeout, count=n <= COUNT_LOADED_MAX_RULES)
        seconds = [first["seconds"]] if first["status"] == "ok" else []
        while seconds and len(seconds) < runs:
            again = kernel_load(tool, path, timeout)
            if again["status"] != "ok":
                break
            seconds.append(again["seconds"])
        if seconds:
            first.update(seconds=statistics.median(seconds), runs_s=seconds)
        loads[tool] = {**first, "file_mib": path.stat().st_size / MIB}
    return loads


# --- one rule count -------------------------------------------------------------------------


def measure_rule_count(
    n: int,
    packets: int,
    repeat: int,
    workdir: Path,
    *,
    ipv6_share: float = IPV6_SHARE,
    linear_max_rules: int = LINEAR_MAX_RULES,
    load_timeout: float = LOAD_TIMEOUT_S,
    kernel: bool = True,
) -> dict[str, Any]:
    """Everything measured for one rule count (see the module docstring)."""
    started = time.perf_counter()
    table = generate_rules(n, RULE_SEED, ipv6_share=ipv6_share)
    row: dict[str, Any] = {
        "rules": len(table),
        "ipv4_rules": int(np.count_nonzero((table.family == 0) | (table.family == 4))),
        "ipv6_rules": int(np.count_nonzero((table.family == 0) | (table.family == 6))),
        "generate_s": time.perf_counter() - started,
        "rule_table_mib": _table_mib(table),
    }

    compiled: list[Classifier] = []
    compile_runs = _times(
        lambda: compiled.append(Classifier.compile(table)), max(1, min(repeat, 3)), warmup=0
    )
    classifier = compiled[-1]
    del compiled[:-1]
    row["compile"] = {
        "seconds": statistics.median(compile_runs),
        "runs_s": compile_runs,
        **compile_memory(table),
    }
    row["classifier"] = classifier.stats()

    ruleset_text = format_ruleset(Ruleset(rules=list(table), policy=Action.ACCEPT))
    gc.collect()
    started = time.perf_counter()
    parsed = parse_nft(ruleset_text)
    Classifier.compile(parsed.rules, parsed.policy)
    row["from_nft_text_s"] = time.perf_counter() - started
    del parsed

    wanted = generate_packets(table, packets, PACKET_SEED, version=4)
    capture = workdir / f"packets-{n}.pcap"
    write_pcap(capture, capture_batch(wanted))
    batch = read_capture_all(capture)
    keys = flow_keys(parse(batch))
    read_runs = _times(lambda: read_capture_all(capture), repeat)
    parse_runs = _times(lambda: flow_keys(parse(batch)), repeat)
    row["capture"] = {
        "packets": len(batch),
        "ipv4_packets": len(keys),
        "file_mib": capture.stat().st_size / MIB,
        "roundtrip_ok": _same_keys(keys, wanted),
        "read": _rate(read_runs, len(batch)),
        "parse": _rate(parse_runs, len(batch)),
    }
    capture.unlink()

    matches = classifier.classify(keys)
    row["compiled"] = {
        **_rate(_times(lambda: classifier.classify(keys), repeat), len(keys)),
        "matched_share": float(np.count_nonzero(matches >= 0) / max(1, len(keys))),
    }
    keys6 = generate_packets(table, packets, PACKET_SEED, version=6)
    row["compiled_ipv6"] = _rate(_times(lambda: classifier.classify(keys6), repeat), len(keys6))

    if n <= linear_max_rules:
        linear = LinearClassifier.compile(table)
        row["linear"] = {
            **_rate(_times(lambda: linear.classify(keys), repeat), len(keys)),
            "agrees": bool(np.array_equal(linear.classify(keys), matches)),
        }
    else:
        row["linear"] = {"skipped": f"not run above {linear_max_rules} rules: O(rules) per packet"}

    if kernel:
        row["kernel"] = _kernel_loads(table, ruleset_text, workdir, repeat, load_timeout)
    return row


# --- the experiment -------------------------------------------------------------------------


def _with_ratios(rows: list[dict[str, Any]]) -> int:
    """Set each row's per-packet cost ratio to the base row's; returns the base rule count."""
    base = next((r for r in rows if r["rules"] == BASE_RULES), rows[0])
    base_ns = base["compiled"]["ns_per_packet"]
    for row in rows:
        ns = row["compiled"]["ns_per_packet"]
        row["compiled"]["ratio_to_base"] = ns / base_ns if ns and base_ns else None
    return int(base["rules"])


def _targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets at 10^6 rules, when that count was run."""
    top = next((r for r in rows if r["rules"] == 1_000_000), None)
    if top is None:
        return {"evaluated": False, "reason": "1,000,000 rules not in this run"}
    compiled = top["compiled"]
    return {
        "evaluated": True,
        "classification_ge_1_mpps": bool(compiled["mpps"] and compiled["mpps"] >= 1.0),
        "per_packet_le_2x_10_rules": bool(
            compiled["ratio_to_base"] is not None and compiled["ratio_to_base"] <= 2.0
        ),
        "compile_le_10_s": bool(top["compile"]["seconds"] <= 10.0),
        "mpps": compiled["mpps"],
        "ratio_to_base": compiled["ratio_to_base"],
        "compile_s": top["compile"]["seconds"],
    }


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _load_cell(load: dict[str, Any] | None) -> str:
    if load is None:
        return "-"
    if load["status"] == "ok":
        return f"{load['seconds']:,.3f}"
    if load["status"] == "timeout":
        return f"timeout (>{load['timeout_s']:.0f} s)"
    return load["status"]


def _tables(rows: list[dict[str, Any]], base: int) -> list[tuple[str, list[str], list[list[str]]]]:
    load_header = [
        "rules",
        "IPv4 tuples",
        "compile s",
        "compile peak MiB",
        "retained MiB",
        "ours from nft text s",
        "nft -f s",
        "iptables-restore s",
        "iptables-legacy-restore s",
    ]
    load_rows = []
    for r in rows:
        kernel = r.get("kernel", {})
        load_rows.append(
            [
                f"{r['rules']:,}",
                str(r["classifier"].get("ipv4_tuples", "-")),
                f"{r['compile']['seconds']:.3f}",
                _fmt(r["compile"]["peak_mib"], 1),
                _fmt(r["compile"]["retained_mib"], 1),
                f"{r['from_nft_text_s']:.3f}",
                *(_load_cell(kernel.get(tool)) for tool in LOADERS),
            ]
        )
    rate_header = [
        "rules",
        "read ns/pkt",
        "parse ns/pkt",
        "classify ns/pkt",
        "classify Mpps",
        f"vs {base} rules",
        "linear ns/pkt",
        "linear Mpps",
        "IPv6 classify ns/pkt",
    ]
    rate_rows = []
    for r in rows:
        c, lin = r["compiled"], r["linear"]
        rate_rows.append(
            [
                f"{r['rules']:,}",
                _fmt(r["capture"]["read"]["ns_per_packet"], 0),
                _fmt(r["capture"]["parse"]["ns_per_packet"], 0),
                _fmt(c["ns_per_packet"], 0),
                _fmt(c["mpps"], 2),
                f"{c['ratio_to_base']:.1f}x" if c["ratio_to_base"] else "-",
                _fmt(lin.get("ns_per_packet"), 0) if "skipped" not in lin else "not run",
                _fmt(lin.get("mpps"), 3) if "skipped" not in lin else "-",
                _fmt(r["compiled_ipv6"]["ns_per_packet"], 0),
            ]
        )
    return [
        ("firewall ruleset: compile / load", load_header, load_rows),
        ("firewall classification on one core (IPv4 capture)", rate_header, rate_rows),
    ]


def firewall_classification(
    rule_counts: Sequence[int] = RULE_COUNTS,
    packets: int = PACKETS,
    repeat: int = REPEAT,
    *,
    ipv6_share: float = IPV6_SHARE,
    linear_max_rules: int = LINEAR_MAX_RULES,
    load_timeout: float = LOAD_TIMEOUT_S,
    kernel: bool = True,
    out_dir: Path = RESULTS,
    echo: bool = True,
) -> dict[str, Any]:
    """Run the experiment; saves ``nf-firewall.json`` and ``.png`` in `out_dir`."""
    if not rule_counts:
        raise ValueError("no rule counts given")
    if packets < 1 or repeat < 1:
        raise ValueError(f"packets ({packets}) and repeat ({repeat}) must be at least 1")
    results: dict[str, Any] = {
        "experiment": "nf-firewall",
        "parameters": {
            "rule_counts": list(rule_counts),
            "packets": packets,
            "repeat": repeat,
            "ipv6_share": ipv6_share,
            "rule_seed": RULE_SEED,
            "packet_seed": PACKET_SEED,
            "linear_max_rules": linear_max_rules,
            "load_timeout_s": load_timeout,
            "memory_method": MEMORY_METHOD,
        },
        "tools": tool_versions() if kernel else {},
        "rows": [],
    }
    with tempfile.TemporaryDirectory(prefix="nfaas-bench-nf-") as tmp:
        for n in rule_counts:
            if echo:
                print(f"{n:,} rules ...", flush=True)
            row = measure_rule_count(
                n,
                packets,
                repeat,
                Path(tmp),
                ipv6_share=ipv6_share,
                linear_max_rules=linear_max_rules,
                load_timeout=load_timeout,
                kernel=kernel,
            )
            results["rows"].append(row)
            gc.collect()
    base = _with_ratios(results["rows"])
    results["ratio_base_rules"] = base
    results["targets"] = _targets(results["rows"])
    tables = _tables(results["rows"], base)
    if echo:
        for title, header, rows in tables:
            print_table(title, header, rows)
    results["markdown"] = "\n\n".join(markdown(header, rows) for _, header, rows in tables)
    path = save("nf-firewall", results, out_dir)
    _plot(results, path.with_suffix(".png"))
    if echo:
        print(f"results: {path}")
    return results


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    rules = [r["rules"] for r in rows]
    fig, (cost, load) = plt.subplots(1, 2, figsize=(11, 4))

    cost.plot(rules, [r["compiled"]["ns_per_packet"] for r in rows], "o-", label="compiled (TSS)")
    linear = [
        (r["rules"], r["linear"]["ns_per_packet"]) for r in rows if "skipped" not in r["linear"]
    ]
    if linear:
        cost.plot(*zip(*linear, strict=True), "s--", label="linear reference")
    cost.plot(
        rules,
        [r["capture"]["parse"]["ns_per_packet"] for r in rows],
        ":",
        label="parse (for scale)",
    )
    cost.set(xscale="log", yscale="log", xlabel="rules", ylabel="ns per packet (one core)")
    cost.set_title("Classification cost per packet")
    cost.legend()

    series: dict[str, list[tuple[int, float]]] = {
        "ours: compile": [(r["rules"], r["compile"]["seconds"]) for r in rows],
        "ours: parse nft text + compile": [(r["rules"], r["from_nft_text_s"]) for r in rows],
    }
    for tool in LOADERS:
        points = [
            (r["rules"], r["kernel"][tool]["seconds"])
            for r in rows
            if r.get("kernel", {}).get(tool, {}).get("status") == "ok"
        ]
        if points:
            series[f"{tool} (load)"] = points
    for label, points in series.items():
        load.plot(*zip(*points, strict=True), "o-", label=label)
    load.set(xscale="log", yscale="log", xlabel="rules", ylabel="seconds")
    load.set_title("Ruleset compile / load time")
    load.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
