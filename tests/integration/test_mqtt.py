"""MQTT end to end: devices publishing to the platform's MQTT listener (nats-server's) wake
functions with ``mqtt:`` triggers, and the listener interoperates with Mosquitto's clients
and with a Mosquitto broker bridged to it.

Every test works under its own first topic level (the function's unique name), so tests on
the shared platform never see each other's messages.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.client import CallbackAPIVersion
from platform_harness import Platform, free_port, wait_until
from test_triggers import RECORDER, bodies, nats_publish, wait_bound

MOSQUITTO = "/usr/sbin/mosquitto"


@pytest.fixture(scope="module")
def listener(platform: Platform) -> tuple[str, int]:
    """(NATS url, MQTT port) of the platform's nats-server."""
    server = platform.get("/system/info").json()["events"]["nats_server"]
    port = urlparse(server["mqtt"]).port
    assert port, server
    return str(server["url"]), int(port)


def new_client() -> mqtt.Client:
    # nats-server refuses client ids with '.', ' ', '*' or '>': keep to letters and '-'
    return mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"it-{uuid.uuid4().hex[:12]}")


def mqtt_publish(port: int, messages: list[tuple[str, bytes]], qos: int = 1) -> None:
    """Publish with paho; with QoS 1 each call returns once the listener acknowledged it."""
    client = new_client()
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for topic, payload in messages:
            info = client.publish(topic, payload, qos=qos)
            info.wait_for_publish(timeout=10)
            assert info.is_published(), f"{topic}: not acknowledged"
    finally:
        client.disconnect()
        client.loop_stop()


def received(platform: Platform, name: str) -> list[str]:
    return sorted(line.split("body=", 1)[1] for line in bodies(platform, name))


def test_mqtt_publish_wakes_a_function_at_zero(
    platform: Platform, unique_name, listener: tuple[str, int]
) -> None:
    _, port = listener
    name = unique_name("mqtt-temp")
    platform.deploy(name, RECORDER, {"triggers": [{"mqtt": f"{name}/+/temp"}]})
    (consumer,) = wait_bound(platform, name)
    assert consumer["filters"] == [f"{name}.*.temp"]  # the listener's mapping: / -> ., + -> *
    assert platform.status(name)["replicas"] == 0

    mqtt_publish(
        port,
        [
            (f"{name}/dev1/hum", b"55"),  # not a temperature
            (f"{name}/dev1/x/temp", b"deeper"),  # '+' is one level
            (f"{name}/dev1/temp", b"21.5"),
        ],
    )
    lines = platform.wait_for_log(name, "body=21.5")
    assert f"got subject={name}.dev1.temp source=mqtt attempt=1 body=21.5" in lines
    status = platform.status(name)
    assert len(status["cold_starts"]) == 1
    mqtt_publish(port, [(f"{name}/dev2/temp", b"19.0")], qos=0)  # QoS 0 reaches it too
    platform.wait_for_log(name, "body=19.0")
    assert received(platform, name) == ["19.0", "21.5"]


def test_mqtt_hash_also_matches_the_parent_level(
    platform: Platform, unique_name, listener: tuple[str, int]
) -> None:
    _, port = listener
    name = unique_name("mqtt-all")
    platform.deploy(name, RECORDER, {"triggers": [{"mqtt": f"{name}/#"}]})
    consumers = wait_bound(platform, name, 2)
    assert sorted(f for c in consumers for f in c["filters"]) == [name, f"{name}.>"]

    mqtt_publish(port, [(name, b"parent"), (f"{name}/a", b"one"), (f"{name}/a/b/c", b"deep")])
    wait_until(lambda: len(bodies(platform, name)) == 3, what="three deliveries")
    assert received(platform, name) == ["deep", "one", "parent"]
    assert any(f"subject={name} source=mqtt" in line for line in bodies(platform, name))


def test_mosquitto_pub_triggers_a_function(
    platform: Platform, unique_name, listener: tuple[str, int]
) -> None:
    _, port = listener
    name = unique_name("mqtt-mosq")
    platform.deploy(name, RECORDER, {"triggers": [{"mqtt": f"{name}/+/temp"}]})
    wait_bound(platform, name)
    client_id = f"it-pub-{uuid.uuid4().hex[:8]}"
    topic = f"{name}/dev7/temp"
    command = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-i", client_id]
    done = subprocess.run(
        [*command, "-t", topic, "-m", "from-mosquitto"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert done.returncode == 0, done.stderr
    lines = platform.wait_for_log(name, "body=from-mosquitto")
    assert f"got subject={name}.dev7.temp source=mqtt attempt=1 body=from-mosquitto" in lines


def test_mosquitto_sub_receives_what_nats_publishes(unique_name, listener: tuple[str, int]) -> None:
    url, port = listener
    root = unique_name("mqtt-out")
    # -d prints SUBACK once subscribed; stdbuf makes the pipe line-buffered so it shows then
    mosquitto_sub = ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-q", "1"]
    sub = subprocess.Popen(
        ["stdbuf", "-oL", *mosquitto_sub, "-t", f"{root}/#", "-C", "2", "-W", "20", "-v", "-d"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert sub.stdout is not None
        seen = []
        for line in sub.stdout:
            seen.append(line)
            if "received SUBACK" in line:
                break
        assert any("received SUBACK" in line for line in seen), seen
        nats_publish(url, [(f"{root}.dev1.cmd", b"reboot"), (f"{root}.dev2.cmd", b"sleep")], False)
        rest, _ = sub.communicate(timeout=20)
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()
    assert sub.returncode == 0, rest
    assert f"{root}/dev1/cmd reboot" in rest.splitlines()
    assert f"{root}/dev2/cmd sleep" in rest.splitlines()


@pytest.fixture
def mosquitto_bridge(tmp_path: Path, listener: tuple[str, int]) -> Iterator[Any]:
    """Start a Mosquitto broker bridging ``<root>/#`` out to our listener; yields a function
    that configures and starts it for a root, returning its port once the bridge is up."""
    started: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []

    def start(root: str) -> int:
        _, ours = listener
        port = free_port()
        conf = tmp_path / "mosquitto.conf"
        conf.write_text(
            "\n".join(
                [
                    f"listener {port} 127.0.0.1",
                    "allow_anonymous true",
                    "persistence false",
                    "log_dest stdout",
                    "log_type all",
                    "connection nfaas",
                    f"address 127.0.0.1:{ours}",
                    f"topic {root}/# out 1",
                    "bridge_protocol_version mqttv311",
                    "try_private false",  # nats-server is no Mosquitto: no bridge flag
                    "cleansession true",
                    # Mosquitto's default id is <hostname>.<connection>: nats-server refuses '.'
                    f"remote_clientid bridge-{root}",
                    "restart_timeout 1",
                    "notifications true",  # "1" on the local broker once the bridge is up
                    "notifications_local_only true",
                    f"notification_topic bridge-{root}/state",
                    "",
                ]
            )
        )
        log = tmp_path / "mosquitto.log"
        logs.append(log)
        with open(log, "wb") as out:
            started.append(
                subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
            )
        state: list[bytes] = []
        probe = new_client()
        probe.on_message = lambda _c, _u, msg: state.append(msg.payload)

        def connected() -> bool:
            assert started[-1].poll() is None, log.read_text()
            try:
                probe.connect("127.0.0.1", port)
            except OSError:
                return False
            return True

        wait_until(connected, what="Mosquitto to listen")
        probe.loop_start()
        try:
            probe.subscribe(f"bridge-{root}/state", qos=1)
            wait_until(lambda: b"1" in state, what=f"the bridge to connect:\n{log.read_text()}")
        finally:
            probe.disconnect()
            probe.loop_stop()
        return port

    try:
        yield start
    finally:
        for proc in started:
            proc.terminate()  # by its pid: the broker this fixture started
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_mosquitto_bridge_reaches_a_function(
    platform: Platform, unique_name, mosquitto_bridge: Any
) -> None:
    name = unique_name("mqtt-bridge")
    platform.deploy(name, RECORDER, {"triggers": [{"mqtt": f"{name}/+/temp"}]})
    wait_bound(platform, name)
    port = mosquitto_bridge(name)
    mqtt_publish(port, [(f"{name}/dev3/temp", b"bridged-1"), (f"{name}/dev4/temp", b"bridged-2")])
    wait_until(lambda: len(bodies(platform, name)) == 2, what="both bridged messages")
    assert received(platform, name) == ["bridged-1", "bridged-2"]
    assert all(" source=mqtt " in line for line in bodies(platform, name))
