"""The 5G monitoring platform (seed 001) deployed on a real platform and driven over HTTP.

The package is deployed once for the module, in a namespace of its own, with the
``nfaas monitor deploy`` command (its Typer app, run in-process against the platform). Every
experiment id is unique, so the module shares the session's platform with other tests.
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from platform_harness import Platform, wait_until
from typer.testing import CliRunner

from nfaas.cli.monitor import monitor_app
from nfaas.monitor.deploy import deploy


@dataclass
class Monitoring:
    platform: Platform
    namespace: str
    deploy_output: str

    def call(self, function: str, payload: Any = None, **kwargs: Any) -> httpx.Response:
        content = json.dumps(payload).encode() if payload is not None else b""
        return self.platform.invoke(f"{function}.{self.namespace}", content, **kwargs)

    def get(self, function: str, **params: Any) -> httpx.Response:
        return self.platform.invoke(f"{function}.{self.namespace}", method="GET", params=params)

    def topic(self, name: str) -> httpx.Response:
        return self.platform.get(f"/system/topics/{name}")

    def publish(self, topic: str, data: bytes) -> None:
        answer = self.platform.request("POST", f"/system/topics/{topic}/messages", content=data)
        assert answer.status_code == 201, answer.text

    @property
    def dashboards(self) -> str:
        return f"{self.namespace}.dashboards"

    def dashboard_messages(self, exp_id: str) -> list[dict[str, Any]]:
        answer = self.platform.get(
            f"/system/topics/{self.dashboards}/messages",
            params={"subject": f"{self.dashboards}.{exp_id}"},
        )
        assert answer.status_code == 200, answer.text
        return list(answer.json())

    def dashboards_written(self) -> int:
        """Messages ever stored in the dashboards topic (its last sequence number)."""
        return int(self.topic(self.dashboards).json()["state"]["last_seq"])

    def records(self, exp_id: str, **params: Any) -> list[dict[str, Any]]:
        answer = self.get("query", experiment=exp_id, limit=10000, **params)
        return list(answer.json()["records"]) if answer.status_code == 200 else []


@pytest.fixture(scope="module")
def monitoring(platform: Platform) -> Iterator[Monitoring]:
    namespace = f"mon-{uuid.uuid4().hex[:6]}"
    env = {"NFAAS_URL": platform.url, "NFAAS_TOKEN": platform.token, "COLUMNS": "200"}
    result = CliRunner().invoke(monitor_app, ["deploy", "--namespace", namespace], env=env)
    assert result.exit_code == 0, result.output
    yield Monitoring(platform, namespace, result.output)
    removed = CliRunner().invoke(
        monitor_app, ["rm", "--namespace", namespace, "--purge", "--json"], env=env
    )
    assert removed.exit_code == 0, removed.output


def experiment() -> str:
    return f"e{uuid.uuid4().hex[:8]}"


def topics_of(exp_id: str) -> list[str]:
    return [f"uc1.{exp_id}.site1.kpi.latency", f"uc1.{exp_id}.site2.application_metric.rps"]


def steps(result: dict[str, Any]) -> list[str]:
    return [s["step"] + (" (skipped)" if "skipped" in s else "") for s in result["steps"]]


# --- deployment -------------------------------------------------------------------------------


def test_deploy_prints_where_the_dashboard_is(monitoring: Monitoring) -> None:
    url = f"{monitoring.platform.url}/function/dashboard.{monitoring.namespace}"
    assert url in monitoring.deploy_output
    listed = monitoring.platform.get(
        "/system/functions", params={"namespace": monitoring.namespace}
    )
    names = {f["name"] for f in listed.json()}
    assert names == {
        "consumer",
        "consumer-start",
        "create-topic",
        "dashboard",
        "dcm-create",
        "dcm-delete",
        "dcs-create",
        "dcs-delete",
        "delete-topic",
        "fetch-topic",
        "query",
    }
    assert monitoring.topic(monitoring.dashboards).json()["max_msgs_per_subject"] == 1


# --- the data path: chains, records, dashboards -----------------------------------------------


def test_records_reach_the_store_and_each_experiment_gets_one_dashboard(
    monitoring: Monitoring,
) -> None:
    experiments = [experiment(), experiment()]
    topics = [t for e in experiments for t in topics_of(e)]
    written_before = monitoring.dashboards_written()

    created = monitoring.call("dcm-create", {"topics": topics})
    assert created.status_code == 200, created.text
    for result in created.json()["results"]:
        assert result["ok"], result
        assert steps(result) == ["fetch-topic", "create-topic", "dcs-create", "consumer-start"]
        assert result["steps"][-1]["status"] == 202 and result["steps"][-1]["call_id"]
    for topic in topics:
        assert monitoring.topic(topic).status_code == 200
        assert monitoring.topic(f"dcs.{topic}").status_code == 200

    # every topic at once, from several threads: the experiments' first records race
    per_topic = 30
    barrier = threading.Barrier(len(topics))

    def publish(topic: str) -> None:
        barrier.wait()
        for i in range(per_topic):
            monitoring.publish(topic, json.dumps({"value": i, "topic": topic}).encode())

    threads = [threading.Thread(target=publish, args=(t,)) for t in topics]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    for exp_id in experiments:
        wait_until(
            lambda e=exp_id: len(monitoring.records(e)) == 2 * per_topic,
            timeout=30,
            what=f"every record of {exp_id} in its store",
        )
        for topic in topics_of(exp_id):
            metric = topic.rsplit(".", 1)[1]
            records = monitoring.records(exp_id, metric=metric)
            assert sorted(json.loads(r["data"])["value"] for r in records) == list(range(per_topic))
            assert {r["topic"] for r in records} == {topic}
        boards = monitoring.dashboard_messages(exp_id)
        assert len(boards) == 1
        board = json.loads(boards[0]["data"])
        assert board["experiment"] == exp_id and board["first_message"]["topic"] in topics
    # one write per experiment: a second one would have replaced the first (a new sequence)
    assert monitoring.dashboards_written() - written_before == len(experiments)

    # more records later (and the consumer's instances warm): still one dashboard each
    for topic in topics:
        monitoring.publish(topic, b'{"value": 99}')
    wait_until(lambda: len(monitoring.records(experiments[1])) == 2 * per_topic + 2, timeout=30)
    assert monitoring.dashboards_written() - written_before == len(experiments)

    # the dashboard: JSON for programs, a page for browsers
    answer = monitoring.get("dashboard", experiment=experiments[0])
    assert answer.status_code == 200
    shown = answer.json()
    assert shown["experiment"] == experiments[0]
    assert {m["metric"]: m["records"] for m in shown["metrics"]} == {
        "latency": per_topic + 1,
        "rps": per_topic + 1,
    }
    page = monitoring.platform.invoke(
        f"dashboard.{monitoring.namespace}",
        method="GET",
        params={"experiment": experiments[0]},
        headers={"accept": "text/html,application/xhtml+xml,*/*;q=0.8"},
    )
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert experiments[0] in page.text and "latency" in page.text and "<svg" in page.text
    assert "<script" not in page.text
    listing = monitoring.get("dashboard").json()["dashboards"]
    assert set(experiments) <= {b["experiment"] for b in listing}

    # tear down: topics and stores go; the consumer's trigger goes with the topics
    deleted = monitoring.call("dcm-delete", {"topics": topics})
    assert deleted.status_code == 200, deleted.text
    for result in deleted.json()["results"]:
        assert steps(result) == ["fetch-topic", "dcs-delete", "delete-topic"]
    for topic in topics:
        assert monitoring.topic(topic).status_code == 404
        assert monitoring.topic(f"dcs.{topic}").status_code == 404
    assert monitoring.get("query", experiment=experiments[0]).status_code == 404


# --- idempotency ------------------------------------------------------------------------------


def _state(monitoring: Monitoring, topics: list[str]) -> dict[str, Any]:
    out = {}
    for name in topics + [f"dcs.{t}" for t in topics]:
        answer = monitoring.topic(name)
        out[name] = (
            None
            if answer.status_code == 404
            else {k: answer.json()[k] for k in ("labels", "max_age", "max_bytes", "subjects")}
        )
    return out


def test_each_chain_run_twice_ends_in_the_same_state(monitoring: Monitoring) -> None:
    topics = topics_of(experiment())
    label = ("monitoring.collect", monitoring.namespace)

    def collecting() -> bool:
        return all(monitoring.topic(t).json()["labels"].get(label[0]) == label[1] for t in topics)

    first = monitoring.call("dcm-create", {"topics": topics})
    assert first.status_code == 200, first.text
    wait_until(collecting, timeout=15, what="consumer-start to label the topics")
    after_one = _state(monitoring, topics)
    second = monitoring.call("dcm-create", {"topics": topics})
    assert second.status_code == 200, second.text
    for result in second.json()["results"]:
        assert steps(result) == [
            "fetch-topic",
            "create-topic (skipped)",
            "dcs-create",
            "consumer-start",
        ]
        assert result["steps"][2]["outcome"] == "exists"
    wait_until(
        lambda: all(
            c["state"] == "succeeded"
            for c in monitoring.platform.get(
                "/system/calls",
                params={"function": "consumer-start", "namespace": monitoring.namespace},
            ).json()
        ),
        timeout=15,
        what="every consumer-start call to finish",
    )
    assert _state(monitoring, topics) == after_one
    assert all(v is not None for v in after_one.values())

    for _ in range(2):
        gone = monitoring.call("dcm-delete", {"topics": topics})
        assert gone.status_code == 200, gone.text
        assert all(v is None for v in _state(monitoring, topics).values())
    for result in gone.json()["results"]:
        assert steps(result) == ["fetch-topic", "dcs-delete", "delete-topic (skipped)"]
        assert result["steps"][1]["outcome"] == "absent"

    # the single-step functions are idempotent too
    for function, outcome in (
        ("delete-topic", "absent"),
        ("create-topic", "created"),
        ("create-topic", "exists"),
        ("delete-topic", "deleted"),
    ):
        answer = monitoring.call(function, {"topics": topics[:1]})
        assert answer.status_code == 200, answer.text
        assert answer.json()["results"][0]["outcome"] == outcome


def test_a_redelivered_record_is_stored_once(monitoring: Monitoring) -> None:
    exp_id = experiment()
    topic = topics_of(exp_id)[0]
    created = monitoring.call("dcs-create", {"topics": [topic]})  # a store, no topic
    assert created.status_code == 200, created.text
    single = {"x-nfaas-subject": topic, "x-nfaas-sequence": "7"}
    batch = {
        "messages": [
            {"subject": topic, "sequence": 7, "data": "7.5", "encoding": "utf-8", "headers": {}},
            {
                "subject": topic,
                "sequence": 8,
                "data": base64.b64encode(b"\x00\xff").decode(),
                "encoding": "base64",
                "headers": {},
            },
            {"subject": "not.a.monitoring.topic", "sequence": 1, "data": "x", "encoding": "utf-8"},
        ]
    }
    for _ in range(2):  # what the platform does when a delivery was not acknowledged
        answer = monitoring.call("consumer", None, headers=single)
        assert answer.status_code == 200, answer.text
        answer = monitoring.platform.invoke(
            f"consumer.{monitoring.namespace}",
            json.dumps(batch).encode(),
            headers={"x-nfaas-batch": "3", "content-type": "application/json"},
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["ignored"][0]["rule"] == "parts"
    # sequence 7 came first alone (empty body), so the batch's 7 is the same record: only the
    # single one and the batch's 8 are stored, each once
    records = monitoring.records(exp_id)
    assert [(r["data"], r["encoding"]) for r in records] == [("", "utf-8"), ("AP8=", "base64")]
    assert len(monitoring.dashboard_messages(exp_id)) == 1
    assert monitoring.call("dcs-delete", {"topics": [topic]}).status_code == 200


def test_concurrent_first_records_make_one_dashboard(monitoring: Monitoring) -> None:
    exp_id = experiment()
    topics = topics_of(exp_id)
    assert monitoring.call("dcs-create", {"topics": topics}).status_code == 200
    written_before = monitoring.dashboards_written()
    answers: list[int] = []

    def deliver(index: int) -> None:
        headers = {"x-nfaas-subject": topics[index % 2], "x-nfaas-sequence": str(index + 1)}
        with httpx.Client(base_url=monitoring.platform.url, timeout=30) as client:
            answer = client.post(
                f"/function/consumer.{monitoring.namespace}",
                content=b"1",
                headers={"authorization": f"Bearer {monitoring.platform.token}", **headers},
            )
        answers.append(answer.status_code)

    threads = [threading.Thread(target=deliver, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [200] * 8
    assert len(monitoring.dashboard_messages(exp_id)) == 1
    assert monitoring.dashboards_written() - written_before == 1
    assert len(monitoring.records(exp_id)) == 8
    assert monitoring.call("dcs-delete", {"topics": topics}).status_code == 200


# --- bad input and failures -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "rule", "part"),
    [
        ("uc1.e1.site1.kpis.latency", "type", "type"),
        ("uc1.e1.site1.kpi", "parts", None),
        ("uc1.e 1.site1.kpi.latency", "charset", "expId"),
        ("uc1.e1..kpi.latency", "empty", "site"),
    ],
)
def test_a_malformed_topic_name_is_a_400_naming_the_rule(
    monitoring: Monitoring, name: str, rule: str, part: str | None
) -> None:
    good = topics_of(experiment())[0]
    for function in ("dcm-create", "create-topic", "fetch-topic", "dcm-delete", "dcs-create"):
        answer = monitoring.call(function, {"topics": [good, name]})
        assert answer.status_code == 400, (function, answer.text)
        body = answer.json()
        assert body["rule"] == rule and body.get("part") == part, body
        assert body["topic"] == name and name in body["error"]
    assert monitoring.topic(good).status_code == 404  # nothing was done


def test_bad_queries_are_400_and_unknown_experiments_404(monitoring: Monitoring) -> None:
    assert monitoring.get("query").status_code == 400
    assert monitoring.get("query", experiment="a b").json()["rule"] == "charset"
    assert monitoring.get("query", experiment="e1", limit="0").json()["rule"] == "limit"
    missing = experiment()
    assert monitoring.get("query", experiment=missing).status_code == 404
    answer = monitoring.get("dashboard", experiment=missing)
    assert answer.status_code == 404 and missing in answer.json()["error"]
    assert monitoring.call("dcm-create", None).status_code == 400
    assert monitoring.call("consumer", {"not": "a delivery"}).status_code == 400


def test_a_downstream_failure_is_reported_with_its_step_and_status(
    monitoring: Monitoring,
) -> None:
    exp_id = experiment()
    topic = f"uc1.{exp_id}.site1.kpi.latency"
    # a topic that already holds the store's subject: the platform refuses the store (409)
    blocker = f"blocker-{exp_id}"
    made = monitoring.platform.request(
        "POST",
        "/system/topics",
        json={"name": blocker, "subjects": [f"dcs.uc1.{exp_id}.site1.kpi.*"]},
    )
    assert made.status_code == 201, made.text
    try:
        answer = monitoring.call("dcm-create", {"topics": [topic]})
        assert answer.status_code == 502, answer.text
        body = answer.json()
        assert (body["step"], body["status"]) == ("dcs-create", 502)
        (result,) = body["results"]
        assert steps(result) == ["fetch-topic", "create-topic", "dcs-create"]
        assert (result["detail"]["step"], result["detail"]["status"]) == ("create-store", 409)
        assert "overlap" in result["detail"]["error"]
        assert monitoring.topic(topic).status_code == 200  # the steps before it stand
    finally:
        monitoring.platform.request("DELETE", f"/system/topics/{blocker}")
    again = monitoring.call("dcm-create", {"topics": [topic]})  # and a rerun completes it
    assert again.status_code == 200, again.text
    assert monitoring.call("dcm-delete", {"topics": [topic]}).status_code == 200


def test_a_redeploy_replaces_the_functions_token(monitoring: Monitoring) -> None:
    platform = monitoring.platform
    before = platform.describe("dcm-create", namespace=monitoring.namespace)["envVars"]
    done = deploy(platform.url, platform.token, monitoring.namespace)
    assert done.revoked == [before["MONITOR_TOKEN_ID"]]
    old = platform.request("GET", "/system/functions", token=before["NFAAS_TOKEN"])
    assert old.status_code == 401
    topics = topics_of(experiment())
    assert monitoring.call("dcm-create", {"topics": topics}).status_code == 200
    assert monitoring.call("dcm-delete", {"topics": topics}).status_code == 200
