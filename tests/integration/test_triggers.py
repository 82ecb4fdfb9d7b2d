"""Triggers end to end: NATS subjects, topics, label selectors, batches, retries, dead letters
and cron, each waking a function scaled to zero on a real ``nfaas up``.

Messages are published with a plain NATS client (nats-py) on the platform's own nats-server,
the way a device or another service would; what the handler saw is read back from the
function's logs, and what the platform did from describe, /system/calls and the consumers'
state on the server.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import httpx
import nats
import pytest
from nats.errors import NoRespondersError
from nats.js.api import ConsumerInfo
from nats.js.errors import NoStreamResponseError
from platform_harness import Platform, wait_until

EVENTS_STREAM = "NFAAS_EVENTS"

# Logs every delivery: where it came from, which attempt, and the body.
RECORDER = """
def handle(event, context):
    h = event.headers
    print(
        f"got subject={h.get('x-nfaas-subject')} source={h.get('x-nfaas-source')} "
        f"attempt={h.get('x-nfaas-attempt')} body={event.body.decode()}",
        flush=True,
    )
    return "ok"
"""


def text(completed: Any) -> str:
    return " ".join((completed.stdout + completed.stderr).decode(errors="replace").split())


@pytest.fixture(scope="module")
def nats_url(platform: Platform) -> str:
    """The URL a device uses; JetStream API calls (consumers_on) swap in the platform's
    credentials, which devices do not have."""
    url = platform.nats_url()
    ADMIN_URLS[url] = platform.nats_url(admin=True)
    return url


ADMIN_URLS: dict[str, str] = {}


def nats_publish(url: str, messages: list[tuple[str, bytes]], stored: bool = True) -> None:
    """Publish over NATS; ``stored``: through JetStream, waiting for each message's ack (the
    subject must be in a stream), else as plain NATS messages, flushed."""

    async def run() -> None:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            for subject, body in messages:
                if stored:
                    await js.publish(subject, body)
                else:
                    await nc.publish(subject, body)
            await nc.flush()
        finally:
            await nc.close()

    asyncio.run(run())


def consumers_on(url: str, stream: str) -> list[ConsumerInfo]:
    async def run() -> list[ConsumerInfo]:
        nc = await nats.connect(ADMIN_URLS.get(url, url))
        try:
            return list(await nc.jetstream().consumers_info(stream))
        finally:
            await nc.close()

    return asyncio.run(run())


def settled(url: str, stream: str, subject: str) -> bool:
    """Whether the consumer filtering ``subject`` on ``stream`` has nothing pending: every
    message it was given is acknowledged (or terminated) and none waits."""
    for info in consumers_on(url, stream):
        if info.config.filter_subject == subject:
            return info.num_ack_pending == 0 and info.num_pending == 0
    raise AssertionError(f"no consumer on {stream} filters {subject}")


def wait_bound(platform: Platform, name: str, count: int = 1) -> list[dict[str, Any]]:
    """The function's trigger consumers, once ``count`` of them run."""

    def bound() -> list[dict[str, Any]] | None:
        triggers = platform.status(name).get("events", {}).get("triggers", {})
        consumers = triggers.get("consumers", [])
        return consumers if len(consumers) >= count else None

    return list(wait_until(bound, what=f"{count} trigger consumer(s) of {name}"))


def bodies(platform: Platform, name: str, prefix: str = "got ") -> list[str]:
    return [line for line in platform.logs(name) if line.startswith(prefix)]


def remove(platform: Platform, name: str) -> None:
    answer = platform.request("DELETE", "/system/functions", json={"functionName": name})
    assert answer.status_code == 202, answer.text


def test_nats_publish_wakes_a_function_at_zero(
    platform: Platform, unique_name, nats_url: str
) -> None:
    name = unique_name("trg-nats")
    platform.deploy(name, RECORDER, {"triggers": [{"nats": f"{name}.*.temp"}]})
    (consumer,) = wait_bound(platform, name)
    assert (consumer["stream"], consumer["filters"]) == (EVENTS_STREAM, [f"{name}.*.temp"])
    status = platform.status(name)
    assert status["replicas"] == 0 and status["cold_starts"] == []
    assert status["events"]["triggers"]["problems"] == []

    nats_publish(nats_url, [(f"{name}.dev1.temp", b"21.5")])
    lines = platform.wait_for_log(name, "body=21.5")
    assert f"got subject={name}.dev1.temp source=nats attempt=1 body=21.5" in lines
    status = platform.status(name)
    assert len(status["cold_starts"]) == 1  # the message started the first instance
    assert status["cold_starts"][0]["trigger"] == "nats"
    assert status["cold_starts"][0]["first_response"] > 0
    assert status["events"]["succeeded"] == 1
    wait_until(lambda: settled(nats_url, EVENTS_STREAM, f"{name}.*.temp"), what="the ack")


def test_nats_wildcards(platform: Platform, unique_name, nats_url: str) -> None:
    star, rest = unique_name("trg-star"), unique_name("trg-rest")
    platform.deploy(star, RECORDER, {"triggers": [{"nats": f"{star}.*.temp"}]})
    platform.deploy(rest, RECORDER, {"triggers": [{"nats": f"{rest}.>"}]})
    wait_bound(platform, star)
    wait_bound(platform, rest)

    # first what must not match (plain NATS: no stream takes these), then what must
    nats_publish(
        nats_url,
        [
            (f"{star}.dev1.hum", b"no-hum"),
            (f"{star}.dev1.x.temp", b"no-deep"),
            (f"{star}.temp", b"no-short"),
            (rest, b"no-bare"),
        ],
        stored=False,
    )
    nats_publish(
        nats_url,
        [
            (f"{star}.dev1.temp", b"star-1"),
            (f"{star}.dev2.temp", b"star-2"),
            (f"{rest}.a", b"rest-1"),
            (f"{rest}.a.b.c", b"rest-2"),
        ],
    )
    wait_until(lambda: len(bodies(platform, star)) == 2, what="both * matches")
    wait_until(lambda: len(bodies(platform, rest)) == 2, what="both > matches")
    wait_until(lambda: settled(nats_url, EVENTS_STREAM, f"{star}.*.temp"), what="acks (*)")
    wait_until(lambda: settled(nats_url, EVENTS_STREAM, f"{rest}.>"), what="acks (>)")
    seen_star = sorted(line.split("body=")[1] for line in bodies(platform, star))
    seen_rest = sorted(line.split("body=")[1] for line in bodies(platform, rest))
    assert seen_star == ["star-1", "star-2"]
    assert seen_rest == ["rest-1", "rest-2"]
    assert any(f"subject={rest}.a.b.c " in line for line in bodies(platform, rest))


def test_topic_trigger_binds_when_the_topic_appears(platform: Platform, unique_name) -> None:
    name = unique_name("trg-topic")
    topic = f"{name}.readings"
    platform.deploy(name, RECORDER, {"triggers": [{"topic": topic}]})
    problems = wait_until(
        lambda: platform.status(name).get("events", {}).get("triggers", {}).get("problems"),
        what="the missing topic to be reported",
    )
    assert problems == [
        f"trigger 0 (topic {topic}): topic {topic!r} does not exist (yet) in namespace 'default'"
    ]

    created = platform.request("POST", "/system/topics", json={"name": topic})
    assert created.status_code == 201, created.text
    (consumer,) = wait_bound(platform, name)
    assert consumer["stream"] == created.json()["stream"]
    assert platform.status(name)["events"]["triggers"]["problems"] == []
    stored = platform.request("POST", f"/system/topics/{topic}/messages", content=b"via-http")
    assert stored.status_code == 201, stored.text
    lines = platform.wait_for_log(name, "body=via-http")
    assert f"got subject={topic} source=topic attempt=1 body=via-http" in lines
    assert len(platform.status(name)["cold_starts"]) == 1


def test_topics_label_selector_picks_up_later_topics(
    platform: Platform, unique_name, nats_url: str
) -> None:
    name = unique_name("trg-labels")
    experiment = name.replace("-", "")  # a label value only this test uses
    platform.deploy(name, RECORDER, {"triggers": [{"topics": {"exp": experiment}}]})
    wait_until(lambda: "triggers" in platform.status(name).get("events", {}), what="events")
    assert platform.status(name)["events"]["triggers"]["consumers"] == []

    def make(topic: str, labels: dict[str, str]) -> str:
        answer = platform.request("POST", "/system/topics", json={"name": topic, "labels": labels})
        assert answer.status_code == 201, answer.text
        return str(answer.json()["stream"])

    first = make(f"{name}.cell1", {"exp": experiment, "kind": "kpi"})
    other = make(f"{name}.other", {"exp": "someone-else"})
    (consumer,) = wait_bound(platform, name)
    assert consumer["stream"] == first
    nats_publish(nats_url, [(f"{name}.other", b"not-mine"), (f"{name}.cell1", b"cell1-a")])
    platform.wait_for_log(name, "body=cell1-a")

    second = make(f"{name}.cell2", {"exp": experiment})
    streams = {c["stream"] for c in wait_bound(platform, name, 2)}
    assert streams == {first, second}
    nats_publish(nats_url, [(f"{name}.cell2", b"cell2-a")])
    platform.wait_for_log(name, "body=cell2-a")

    # relabelled into the selection: its stored message is delivered too
    relabel = platform.request(
        "PUT", f"/system/topics/{name}.other", json={"labels": {"exp": experiment}}
    )
    assert relabel.status_code == 200, relabel.text
    assert {c["stream"] for c in wait_bound(platform, name, 3)} == {first, second, other}
    platform.wait_for_log(name, "body=not-mine")
    seen = sorted(line.split("body=")[1] for line in bodies(platform, name))
    assert seen == ["cell1-a", "cell2-a", "not-mine"]


BATCHER = """
import json

def handle(event, context):
    batch = json.loads(event.body)
    seqs = [m["sequence"] for m in batch["messages"]]
    datas = [m["data"] for m in batch["messages"]]
    header = event.headers.get("x-nfaas-batch")
    print(f"batch n={len(seqs)} header={header} data={json.dumps(datas)}", flush=True)
    return "ok"
"""


def test_batched_trigger(platform: Platform, unique_name, nats_url: str) -> None:
    name = unique_name("trg-batch")
    subject = f"{name}.m"
    spec = {"triggers": [{"nats": subject, "batch": {"size": 10, "wait": "200ms"}}]}
    platform.deploy(name, BATCHER, spec)
    wait_bound(platform, name)
    # one burst (plain NATS, no wait for acks): batches fill within their wait, and none is
    # left with a lone message (a batch of one)
    nats_publish(nats_url, [(subject, f"m{i}".encode()) for i in range(25)], stored=False)

    def batches() -> list[tuple[int, list[str]]]:
        out = []
        for line in platform.logs(name):
            match = re.match(r"batch n=(\d+) header=(\d+) data=(.*)", line)
            if match:
                assert match.group(1) == match.group(2)
                out.append((int(match.group(1)), json.loads(match.group(3))))
        return out

    wait_until(lambda: sum(n for n, _ in batches()) >= 25, what="25 messages in batches")
    wait_until(lambda: settled(nats_url, EVENTS_STREAM, subject), what="every batch acked")
    got = batches()
    assert sum(n for n, _ in got) == 25
    assert all(1 <= n <= 10 for n, _ in got)
    assert len(got) < 25  # batched, not one call per message
    assert sorted(d for _, data in got for d in data) == sorted(f"m{i}" for i in range(25))


FLAKY = """
def handle(event, context):
    attempt = int(event.headers["x-nfaas-attempt"])
    body = event.body.decode()
    if body.startswith("flaky") and attempt == 1:
        print(f"fail {body} attempt={attempt}", flush=True)
        return {"statusCode": 500, "body": "not yet"}
    if body.startswith("poison"):
        print(f"fail {body} attempt={attempt}", flush=True)
        return {"statusCode": 500, "body": "never"}
    print(f"ok {body} attempt={attempt}", flush=True)
    return "done"
"""


def test_acknowledged_only_after_success(platform: Platform, unique_name, nats_url: str) -> None:
    name = unique_name("trg-retry")
    subject = f"{name}.jobs"
    spec = {"triggers": [{"nats": subject}], "retry": {"backoff": "100ms"}}
    platform.deploy(name, FLAKY, spec)
    wait_bound(platform, name)
    nats_publish(nats_url, [(subject, b"flaky-1")])
    platform.wait_for_log(name, "ok flaky-1 attempt=2")
    wait_until(lambda: settled(nats_url, EVENTS_STREAM, subject), what="the ack")
    nats_publish(nats_url, [(subject, b"after-1")])
    platform.wait_for_log(name, "ok after-1 attempt=1")
    wait_until(lambda: settled(nats_url, EVENTS_STREAM, subject), what="the second ack")

    lines = platform.logs(name)
    assert lines.count("fail flaky-1 attempt=1") == 1
    assert lines.count("ok flaky-1 attempt=2") == 1
    assert not any("flaky-1 attempt=3" in line for line in lines)
    events = platform.status(name)["events"]
    assert (events["succeeded"], events["retried"], events["dead"]) == (2, 1, 0)
    dead = platform.get("/system/calls", params={"function": name, "state": "dead"})
    assert dead.status_code == 200 and dead.json() == []


def test_poison_message_goes_to_dead_letters_without_blocking(
    platform: Platform, unique_name, nats_url: str
) -> None:
    name = unique_name("trg-poison")
    subject = f"{name}.jobs"
    spec = {
        "triggers": [{"nats": subject}],
        "retry": {"attempts": 2, "backoff": "100ms"},
        "queue": {"concurrency": 1},  # one at a time: the poison must not hold up the rest
        "scale": {"max": 1},
    }
    platform.deploy(name, FLAKY, spec)
    wait_bound(platform, name)
    nats_publish(nats_url, [(subject, body) for body in (b"poison-1", b"good-1", b"good-2")])
    for good in ("good-1", "good-2"):
        platform.wait_for_log(name, f"ok {good} attempt=1")

    def dead_calls() -> list[dict[str, Any]]:
        answer = platform.get("/system/calls", params={"function": name, "state": "dead"})
        assert answer.status_code == 200, answer.text
        return list(answer.json())

    (dead,) = wait_until(dead_calls, what="the poison message in the dead letters")
    assert (dead["source"], dead["state"], dead["attempts"], dead["status"]) == (
        "nats",
        "dead",
        2,
        500,
    )
    assert dead["result"] == "never"
    shown = platform.get(f"/system/calls/{dead['id']}")
    assert shown.status_code == 200 and shown.json()["function"] == name
    wait_until(lambda: settled(nats_url, EVENTS_STREAM, subject), what="nothing left pending")
    lines = platform.logs(name)
    assert [line for line in lines if "poison-1" in line] == [
        "fail poison-1 attempt=1",
        "fail poison-1 attempt=2",
    ]
    listed = platform.cli("calls", "ls", name, "--dead", "--json")
    assert listed.returncode == 0, text(listed)
    assert [c["id"] for c in json.loads(listed.stdout)] == [dead["id"]]
    events = platform.status(name)["events"]
    assert (events["succeeded"], events["dead"]) == (2, 1)


def test_cron_fires_repeatedly(platform: Platform, unique_name) -> None:
    name = unique_name("trg-cron")
    spec = {"triggers": [{"cron": "@every 1s", "body": "tick"}]}
    platform.deploy(name, RECORDER, spec)
    try:
        wait_until(
            lambda: len([line for line in bodies(platform, name) if "body=tick" in line]) >= 2,
            timeout=15,
            what="two cron fires",
        )
        assert all("source=cron" in line for line in bodies(platform, name))
        calls = platform.get("/system/calls", params={"function": name}).json()
        assert {c["source"] for c in calls} == {"cron"}
        assert len({c["id"] for c in calls}) == len(calls) >= 2  # one call per fire
    finally:
        remove(platform, name)


@pytest.mark.parametrize(
    ("triggers", "field", "fragment"),
    [
        ([{"mqtt": "sensors/#/temp"}], "triggers.0.mqtt", "'#' may only be the last level"),
        ([{"mqtt": "sensors/te+mp"}], "triggers.0.mqtt", "must be whole levels"),
        ([{"mqtt": "sensors//temp"}], "triggers.0.mqtt", "is empty"),
        ([{"cron": "61 * * * *"}], "triggers.0.cron", "61"),
        ([{"cron": "* * * *"}], "triggers.0.cron", "has 4 fields, expected 5"),
        ([{"nats": "a"}, {"cron": "@every"}], "triggers.1.cron", "@every needs a duration"),
        ([{"nats": "a", "batch": {"size": 0}}], "triggers.0.batch.size", "from 1 to 10000"),
        ([{"nats": "a", "batch": {"size": "ten"}}], "triggers.0.batch.size", "integer"),
        ([{"nats": "a", "batch": {"wait": "2m"}}], "triggers.0.batch.wait", "at most 60s"),
        ([{"nats": "a", "batch": {"count": 2}}], "triggers.0.batch.count", "unknown key"),
        ([{"cron": "@every 1s", "batch": {"size": 2}}], "triggers.0.batch", "one call"),
        ([{"nats": "a.>.b"}], "triggers.0.nats", "'>' may only be the last token"),
        ([{"nats": "nfaas.calls.x"}], "triggers.0.nats", "reserved"),
        ([{"nats": ""}], "triggers.0.nats", "non-empty string"),
        ([{"topic": "a.*"}], "triggers.0.topic", "wildcard"),
        ([{"topics": {}}], "triggers.0.topics", "non-empty mapping"),
        ([{"nats": "a", "topic": "b"}], "triggers.0", "exactly one of"),
        ([{"nats": "a", "body": "x"}], "triggers.0.body", "unknown key"),
        (["nats: a"], "triggers.0", "expected a mapping"),
        ({"nats": "a"}, "triggers", "expected a list"),
    ],
)
def test_bad_trigger_is_400_naming_the_field(
    platform: Platform, unique_name, triggers: Any, field: str, fragment: str
) -> None:
    name = unique_name("badtrg")
    sha = platform.upload({"handler.py": RECORDER})
    answer = platform.request(
        "POST",
        "/system/functions",
        json={"name": name, "bundle": sha, "spec": {"triggers": triggers}},
    )
    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert body["field"] == field
    assert body["error"].startswith(f"{field}: ")
    assert fragment in body["error"]
    assert platform.get(f"/system/function/{name}").status_code == 404


def test_bad_trigger_in_a_manifest_names_file_and_line(platform: Platform) -> None:
    manifest = platform.manifest({"trg-manifest": (RECORDER, {})})
    manifest.write_text(
        "functions:\n"  # 1
        "  trg-manifest:\n"  # 2
        "    handler: ./trg-manifest\n"  # 3
        "    triggers:\n"  # 4
        "      - nats: sensors.*.temp\n"  # 5
        "      - mqtt: sensors/#/temp\n"  # 6
    )
    done = platform.cli("deploy", "-f", str(manifest))
    assert done.returncode != 0
    assert f"{manifest}:6: functions.trg-manifest.triggers.1.mqtt: " in text(done)
    assert "'#' may only be the last level" in text(done)

    manifest.write_text(
        "functions:\n"  # 1
        "  trg-manifest:\n"  # 2
        "    handler: ./trg-manifest\n"  # 3
        "    triggers:\n"  # 4
        "      - nats: jobs\n"  # 5
        "        batch:\n"  # 6
        "          size: 0\n"  # 7
    )
    done = platform.cli("deploy", "-f", str(manifest))
    assert done.returncode != 0
    assert f"{manifest}:7: functions.trg-manifest.triggers.0.batch.size: " in text(done)
    assert platform.get("/system/function/trg-manifest").status_code == 404


def test_trigger_subjects_stay_captured_while_the_router_refreshes(
    platform: Platform, unique_name, nats_url: str
) -> None:
    """Topic changes make the router rewrite the events stream's subjects; a subject it keeps
    must never drop out meanwhile (a publish then finds no stream and the message is lost)."""
    name = unique_name("trg-steady")
    triggers = [{"nats": f"{name}.a"}, {"nats": f"{name}.b"}]
    platform.deploy(name, "def handle(event, context):\n    return 'ok'\n", {"triggers": triggers})
    wait_bound(platform, name, 2)

    async def publish_while_topics_change() -> tuple[int, int]:
        churning = True

        async def churn() -> None:
            nonlocal churning
            async with httpx.AsyncClient(
                base_url=platform.url, headers={"authorization": f"Bearer {platform.token}"}
            ) as http:
                for index in range(10):
                    topic = f"{name}.churn{index}"
                    answer = await http.post("/system/topics", json={"name": topic})
                    assert answer.status_code == 201, answer.text
                    assert (await http.delete(f"/system/topics/{topic}")).status_code == 204
            churning = False

        async def publish() -> tuple[int, int]:
            nc = await nats.connect(nats_url)
            stored = refused = 0
            try:
                js = nc.jetstream()
                while churning:
                    try:
                        await js.publish(f"{name}.b", b"x", timeout=5)
                        stored += 1
                    except (NoRespondersError, NoStreamResponseError):
                        refused += 1
            finally:
                await nc.close()
            return stored, refused

        counts, _ = await asyncio.gather(publish(), churn())
        return counts

    stored, refused = asyncio.run(publish_while_topics_change())
    assert (stored > 0, refused) == (True, 0)
    wait_until(lambda: platform.status(name)["events"]["succeeded"] == stored, what="deliveries")


# Like BATCHER; a lone message is a batch of one.
LENIENT_BATCHER = """
import json

def handle(event, context):
    if event.headers.get("x-nfaas-batch"):
        datas = [m["data"] for m in json.loads(event.body)["messages"]]
    else:
        datas = [event.body.decode()]
    print(f"batch n={len(datas)} data={json.dumps(datas)}", flush=True)
    return "ok"
"""


def test_new_batch_settings_apply_on_redeploy(
    platform: Platform, unique_name, nats_url: str
) -> None:
    name = unique_name("trg-rebatch")
    subject = f"{name}.m"
    spec = {"triggers": [{"nats": subject, "batch": {"size": 10, "wait": "200ms"}}]}
    platform.deploy(name, LENIENT_BATCHER, spec)
    wait_bound(platform, name)
    spec["triggers"][0]["batch"] = {"size": 3, "wait": "200ms"}
    platform.deploy(name, LENIENT_BATCHER, spec)  # same trigger, smaller batches
    wait_bound(platform, name)
    nats_publish(nats_url, [(subject, f"m{i}".encode()) for i in range(9)], stored=False)
    # Up to 30 s: the replaced loop's last pull request may have taken the messages, and
    # ConsumerLoop never unsubscribes it, so they come back only after the ack wait (10 s).
    wait_until(
        lambda: (
            sum(int(n) for n in re.findall(r"batch n=(\d+)", "\n".join(platform.logs(name)))) == 9
        ),
        timeout=30,
        what="9 messages in batches",
    )
    sizes = [int(n) for n in re.findall(r"batch n=(\d+)", "\n".join(platform.logs(name)))]
    assert max(sizes) <= 3, sizes


def test_a_topic_takes_over_trigger_subjects_and_their_backlog_drains(
    platform: Platform, unique_name, nats_url: str
) -> None:
    """A trigger's subject no topic holds is captured by the platform's events stream; a topic
    made later over it takes the subject over. What the events stream already holds is still
    delivered, later messages come through the topic: none lost, none run twice."""
    name = unique_name("trg-taken")
    subject = f"{name}.dev1.temp"
    spec = {"triggers": [{"nats": f"{name}.*.temp"}], "retry": {"backoff": "3s"}}
    platform.deploy(name, FLAKY, spec)
    wait_bound(platform, name)
    nats_publish(nats_url, [(subject, b"flaky-old")])  # fails once: waits 3 s in the stream
    platform.wait_for_log(name, "fail flaky-old attempt=1")
    answer = platform.request(
        "POST", "/system/topics", json={"name": name, "subjects": [f"{name}.>"]}
    )
    assert answer.status_code == 201, answer.text
    stream = answer.json()["stream"]
    nats_publish(nats_url, [(subject, b"new-1")])  # the topic stores it now
    platform.wait_for_log(name, "ok new-1 attempt=1")
    platform.wait_for_log(name, "ok flaky-old attempt=2")

    def moved() -> bool:
        consumers = platform.status(name)["events"]["triggers"]["consumers"]
        return [c["stream"] for c in consumers] == [stream]

    wait_until(moved, timeout=30, what="the drained events-stream consumer to go")
    lines = platform.logs(name)
    assert lines.count("ok new-1 attempt=1") == 1
    assert lines.count("ok flaky-old attempt=2") == 1
    assert platform.status(name)["events"]["triggers"]["problems"] == []


def test_a_topic_cutting_into_a_trigger_subject_is_409_naming_it(
    platform: Platform, unique_name
) -> None:
    """A topic inside a trigger's wider subject cannot take it over (the trigger would then
    span two streams): refused, naming the subject."""
    name = unique_name("trg-wide")
    platform.deploy(name, RECORDER, {"triggers": [{"nats": f"{name}.>"}]})
    wait_bound(platform, name)
    answer = platform.request("POST", "/system/topics", json={"name": f"{name}.a"})
    assert answer.status_code == 409, answer.text
    assert f"the subjects function triggers listen on ({name}.>)" in answer.json()["error"]


def test_from_new_skips_stored_history_and_from_all_replays_it(
    platform: Platform, unique_name
) -> None:
    topic = unique_name("trg-hist").replace("-", ".", 1)
    assert platform.request("POST", "/system/topics", json={"name": topic}).status_code == 201
    history = platform.request("POST", f"/system/topics/{topic}/messages", content=b"old-1")
    assert history.status_code == 201
    fresh, replay = unique_name("trg-new"), unique_name("trg-all")
    platform.deploy(fresh, RECORDER, {"triggers": [{"topic": topic}]})
    platform.deploy(replay, RECORDER, {"triggers": [{"topic": topic, "from": "all"}]})
    wait_bound(platform, fresh)
    wait_bound(platform, replay)
    answer = platform.request("POST", f"/system/topics/{topic}/messages", content=b"new-1")
    assert answer.status_code == 201
    platform.wait_for_log(fresh, "body=new-1")
    platform.wait_for_log(replay, "body=new-1")
    assert [line.rsplit("=", 1)[1] for line in bodies(platform, replay)] == ["old-1", "new-1"]
    # the stream delivers in order: had old-1 been due, it would have come first
    assert [line.rsplit("=", 1)[1] for line in bodies(platform, fresh)] == ["new-1"]
    described = platform.describe(replay)["triggers"]
    assert described == [{"topic": topic, "from": "all"}]


def test_a_lone_message_on_a_batched_trigger_is_a_batch_of_one(
    platform: Platform, unique_name, nats_url: str
) -> None:
    name = unique_name("trg-lone")
    subject = f"{name}.m"
    spec = {
        "triggers": [{"nats": subject, "batch": {"size": 10, "wait": "100ms"}}],
        "retry": {"attempts": 1},
    }
    platform.deploy(name, BATCHER, spec)
    wait_bound(platform, name)
    nats_publish(nats_url, [(subject, b"alone")])
    wait_until(lambda: settled(nats_url, EVENTS_STREAM, subject), what="the delivery")
    assert 'batch n=1 header=1 data=["alone"]' in platform.logs(name)


def test_cli_deploys_a_manifest_with_triggers(
    platform: Platform, unique_name, nats_url: str
) -> None:
    name = unique_name("trg-cli")
    manifest = platform.manifest(
        {
            name: (
                RECORDER,
                {
                    "triggers": [
                        {"nats": f"{name}.jobs", "batch": {"size": 2, "wait": "100ms"}},
                        {"mqtt": f"{name}/+/temp"},
                        {"cron": "0 3 * * *", "body": "nightly"},
                    ],
                    "retry": {"attempts": 2, "backoff": "100ms"},
                },
            )
        }
    )
    done = platform.cli("deploy", "-f", str(manifest))
    assert done.returncode == 0, text(done)
    wait_bound(platform, name, 2)
