"""Topics end to end: the /system/topics API and ``nfaas topic``, against a real nats-server.

A topic is a JetStream stream with limits and labels; these tests drive it the way a user
does (REST, CLI, and a plain NATS client publishing on its subjects) and check what the
stream then holds.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import nats
import pytest
from platform_harness import Platform, wait_until


def text(completed: Any) -> str:
    """stdout + stderr, whitespace collapsed (rich wraps long lines)."""
    return " ".join((completed.stdout + completed.stderr).decode(errors="replace").split())


def topic_name(unique_name: Any, prefix: str = "t") -> str:
    """A fresh topic name; dots make it a multi-token subject, as topics usually are."""
    return unique_name(prefix).replace("-", ".", 1)


def create(platform: Platform, name: str, **settings: Any) -> dict[str, Any]:
    answer = platform.request("POST", "/system/topics", json={"name": name, **settings})
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def publish(
    platform: Platform, name: str, body: bytes, subject: str | None = None, msg_id: str = ""
) -> dict[str, Any]:
    answer = platform.request(
        "POST",
        f"/system/topics/{name}/messages",
        content=body,
        params={"subject": subject} if subject else {},
        headers={"x-msg-id": msg_id} if msg_id else {},
    )
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def read(platform: Platform, name: str, **params: Any) -> list[dict[str, Any]]:
    answer = platform.get(f"/system/topics/{name}/messages", params=params)
    assert answer.status_code == 200, answer.text
    return list(answer.json())


@pytest.fixture(scope="module")
def nats_url(platform: Platform) -> str:
    return str(platform.get("/system/info").json()["events"]["nats_server"]["url"])


def test_rest_lifecycle(platform: Platform, unique_name) -> None:
    name = topic_name(unique_name)
    created = create(
        platform,
        name,
        subjects=[f"{name}.>"],
        max_age="24h",
        max_bytes="1Gi",
        max_msgs=1000,
        storage="memory",
        labels={"exp": "e1", "collect": "true"},
        description="kpis of experiment e1",
    )
    assert created["name"] == name
    assert created["subjects"] == [f"{name}.>"]
    assert (created["retention"], created["storage"]) == ("limits", "memory")
    assert created["max_age"] == 24 * 3600
    assert created["max_bytes"] == 1024**3
    assert created["max_msgs"] == 1000
    assert created["labels"] == {"exp": "e1", "collect": "true"}
    assert created["state"]["messages"] == 0

    listed = {t["name"]: t for t in platform.get("/system/topics").json()}
    assert listed[name]["labels"] == {"exp": "e1", "collect": "true"}
    described = platform.get(f"/system/topics/{name}").json()
    assert described["description"] == "kpis of experiment e1"
    assert described["stream"] == created["stream"]

    # PUT replaces the settings: the labels change, what is sent again is kept
    put = platform.request(
        "PUT",
        f"/system/topics/{name}",
        json={
            "subjects": [f"{name}.>"],
            "max_age": "24h",
            "storage": "memory",
            "labels": {"exp": "e2"},
        },
    )
    assert put.status_code == 200, put.text
    assert put.json()["labels"] == {"exp": "e2"}
    described = platform.get(f"/system/topics/{name}").json()
    assert described["labels"] == {"exp": "e2"}
    assert described["max_age"] == 24 * 3600
    assert described["max_msgs"] == -1  # absent from the PUT: back to the default

    assert platform.request("DELETE", f"/system/topics/{name}").status_code == 204
    assert platform.get(f"/system/topics/{name}").status_code == 404
    assert name not in {t["name"] for t in platform.get("/system/topics").json()}


def test_cli_lifecycle(platform: Platform, unique_name) -> None:
    name = topic_name(unique_name)
    done = platform.cli(
        "topic",
        "create",
        name,
        "--subject",
        f"{name}.a",
        "--subject",
        f"{name}.b.*",
        "--retention",
        "limits",
        "--max-age",
        "2h",
        "--max-bytes",
        "64Mi",
        "--max-msgs",
        "500",
        "--max-msgs-per-subject",
        "10",
        "--storage",
        "file",
        "--label",
        "exp=e7",
        "--label",
        "site=edge1",
        "--description",
        "made by the cli",
    )
    assert done.returncode == 0, text(done)
    assert f"topic {name} created" in text(done)

    listed = json.loads(platform.cli("topic", "ls", "--json").stdout)
    mine = next(t for t in listed if t["name"] == name)
    assert mine["subjects"] == [f"{name}.a", f"{name}.b.*"]
    assert mine["labels"] == {"exp": "e7", "site": "edge1"}
    table = platform.cli("topic", "ls")
    assert table.returncode == 0 and name in text(table)

    described = json.loads(platform.cli("topic", "describe", name, "--json").stdout)
    assert (described["max_age"], described["max_bytes"]) == (7200, 64 * 1024**2)
    assert (described["max_msgs"], described["max_msgs_per_subject"]) == (500, 10)
    assert described["description"] == "made by the cli"
    human = text(platform.cli("topic", "describe", name))
    assert "max_age: 2h" in human and "max_bytes: 64Mi" in human and "exp=e7" in human

    # update merges: only the labels change, every other setting stays
    done = platform.cli("topic", "update", name, "--label", "exp=e8", "--unlabel", "site")
    assert done.returncode == 0, text(done)
    described = json.loads(platform.cli("topic", "describe", name, "--json").stdout)
    assert described["labels"] == {"exp": "e8"}
    assert (described["max_age"], described["max_msgs"]) == (7200, 500)
    assert described["subjects"] == [f"{name}.a", f"{name}.b.*"]

    done = platform.cli("topic", "publish", name, "--subject", f"{name}.b.x", input=b"[hello]")
    assert done.returncode == 0, text(done)
    assert f"stored as message 1 on {name}.b.x" in text(done)
    stored = json.loads(
        platform.cli(
            "topic", "publish", name, "-s", f"{name}.a", "--id", "m-1", "--json", input=b"\x00\xff"
        ).stdout
    )
    assert (stored["seq"], stored["duplicate"]) == (2, False)
    again = platform.cli("topic", "publish", name, "-s", f"{name}.a", "--id", "m-1", input=b"x")
    assert again.returncode == 0 and "duplicate of message 2" in text(again)

    messages = json.loads(platform.cli("topic", "read", name, "--json").stdout)
    assert [(m["seq"], m["subject"]) for m in messages] == [(1, f"{name}.b.x"), (2, f"{name}.a")]
    assert (messages[0]["data"], messages[0]["encoding"]) == ("[hello]", "utf-8")
    assert (messages[1]["data"], messages[1]["encoding"]) == ("AP8=", "base64")
    only_a = json.loads(
        platform.cli("topic", "read", name, "--subject", f"{name}.a", "--json").stdout
    )
    assert [m["seq"] for m in only_a] == [2]
    later = json.loads(platform.cli("topic", "read", name, "--from", "2", "--json").stdout)
    assert [m["seq"] for m in later] == [2]
    shown = platform.cli("topic", "read", name)
    assert shown.returncode == 0 and "[hello]" in text(shown)  # not taken as rich markup

    done = platform.cli("topic", "rm", name)
    assert done.returncode == 0 and f"topic {name} removed" in text(done)
    gone = platform.cli("topic", "describe", name)
    assert gone.returncode == 1
    assert f"topic '{name}' not found (HTTP 404)" in text(gone)


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("", "non-empty"),
        ("a..b", "token 2 is empty"),
        (".a", "token 1 is empty"),
        ("a.", "token 2 is empty"),
        ("a.*", "wildcard '*' is not allowed"),
        ("a.>", "wildcard '>' is not allowed"),
        ("a b", "use letters, digits"),
        ("a/b", "use letters, digits"),
        ("temp°c", "use letters, digits"),
        ("nfaas.calls", "'nfaas.' subjects are reserved"),
        ("nfaas", "'nfaas.' subjects are reserved"),
        ("$SYS.x", "'$' subjects are reserved"),
        ("_INBOX.x", "'_INBOX.' subjects are reserved"),
    ],
)
def test_malformed_topic_name_is_400_naming_the_rule(
    platform: Platform, name: str, rule: str
) -> None:
    answer = platform.request("POST", "/system/topics", json={"name": name})
    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert body["field"] == "name"
    assert body["error"].startswith("name: ")
    assert rule in body["error"]


@pytest.mark.parametrize(
    ("settings", "field", "fragment"),
    [
        ({"subjects": ["x.a..b"]}, "subjects.0", "token 3 is empty"),
        ({"subjects": ["ok.a", "nfaas.x"]}, "subjects.1", "reserved"),
        ({"subjects": ["x.>.y"]}, "subjects.0", "'>' may only be the last token"),
        ({"retention": "forever"}, "retention", "not one of limits, interest, workqueue"),
        ({"storage": "tape"}, "storage", "not one of file, memory"),
        ({"max_age": "soon"}, "max_age", "expected a duration"),
        ({"max_bytes": "lots"}, "max_bytes", "expected a size"),
        ({"max_msgs": -5}, "max_msgs", "must be positive"),
    ],
)
def test_malformed_topic_settings_are_400_naming_the_field(
    platform: Platform, unique_name, settings: dict[str, Any], field: str, fragment: str
) -> None:
    name = topic_name(unique_name)
    answer = platform.request("POST", "/system/topics", json={"name": name, **settings})
    assert answer.status_code == 400, answer.text
    assert answer.json()["field"] == field
    assert fragment in answer.json()["error"]
    assert platform.get(f"/system/topics/{name}").status_code == 404  # nothing was made


def test_zero_means_no_limit(platform: Platform, unique_name) -> None:
    name = topic_name(unique_name)
    created = create(platform, name, max_age="0", max_bytes=-1, max_msgs=0)
    assert (created["max_age"], created["max_bytes"], created["max_msgs"]) == (0, -1, -1)


def test_cli_prints_the_servers_reason(platform: Platform) -> None:
    done = platform.cli("topic", "create", "a..b")
    assert done.returncode == 1
    assert "name: subject 'a..b', token 2 is empty" in text(done)
    assert "(field: name) (HTTP 400)" in text(done)
    bad_label = platform.cli("topic", "create", "fine.name", "--label", "nolabel")
    assert bad_label.returncode == 1 and "--label 'nolabel': expected key=value" in text(bad_label)


def test_unknown_topic_is_404(platform: Platform, unique_name) -> None:
    name = topic_name(unique_name, "missing")
    for method, path in [
        ("GET", f"/system/topics/{name}"),
        ("DELETE", f"/system/topics/{name}"),
        ("POST", f"/system/topics/{name}/messages"),
        ("GET", f"/system/topics/{name}/messages"),
        ("PUT", f"/system/topics/{name}"),
    ]:
        kwargs: dict[str, Any] = {"json": {}} if method == "PUT" else {}
        answer = platform.request(method, path, **kwargs)
        assert answer.status_code == 404, (method, path, answer.text)
        assert answer.json()["error"] == f"topic {name!r} not found"
    for args in (["describe"], ["rm"], ["read"], ["publish"]):
        done = platform.cli("topic", *args, name, input=b"x")
        assert done.returncode == 1 and "HTTP 404" in text(done), (args, text(done))


def test_duplicate_and_overlapping_topics_are_409(platform: Platform, unique_name) -> None:
    name = topic_name(unique_name)
    create(platform, name, subjects=[f"{name}.*.kpi"])
    twice = platform.request("POST", "/system/topics", json={"name": name})
    assert twice.status_code == 409, twice.text
    assert twice.json()["error"] == f"topic {name!r} already exists"

    other = topic_name(unique_name)
    overlap = platform.request(
        "POST", "/system/topics", json={"name": other, "subjects": [f"{name}.cell7.>"]}
    )
    assert overlap.status_code == 409, overlap.text
    assert f"overlap topic {name!r} ({name}.*.kpi)" in overlap.json()["error"]
    assert platform.get(f"/system/topics/{other}").status_code == 404
    # an update into someone else's subjects is refused the same way
    create(platform, other)
    moved = platform.request("PUT", f"/system/topics/{other}", json={"subjects": [f"{name}.>"]})
    assert moved.status_code == 409, moved.text
    assert platform.get(f"/system/topics/{other}").json()["subjects"] == [other]


def test_publish_with_msg_id_is_stored_once(platform: Platform, unique_name) -> None:
    name = topic_name(unique_name)
    create(platform, name)
    first = publish(platform, name, b"reading 1", msg_id="dev1-0001")
    again = publish(platform, name, b"reading 1", msg_id="dev1-0001")
    other = publish(platform, name, b"reading 2", msg_id="dev1-0002")
    assert (first["seq"], first["duplicate"]) == (1, False)
    assert (again["seq"], again["duplicate"]) == (1, True)
    assert (other["seq"], other["duplicate"]) == (2, False)
    assert [m["data"] for m in read(platform, name)] == ["reading 1", "reading 2"]
    assert platform.get(f"/system/topics/{name}").json()["state"]["messages"] == 2


def test_publish_outside_the_topics_subjects_is_400(platform: Platform, unique_name) -> None:
    name = topic_name(unique_name)
    create(platform, name, subjects=[f"{name}.in.*"])
    for subject, fragment in [
        (None, "is not one of topic"),  # the name itself is not among its subjects
        (f"{name}.out.x", "is not one of topic"),
        (f"{name}.in.*", "wildcard '*' is not allowed"),
    ]:
        answer = platform.request(
            "POST",
            f"/system/topics/{name}/messages",
            content=b"x",
            params={"subject": subject} if subject else {},
        )
        assert answer.status_code == 400, answer.text
        assert answer.json()["field"] == "subject"
        assert fragment in answer.json()["error"]


def test_read_filters_by_subject_and_start_seq(
    platform: Platform, unique_name, nats_url: str
) -> None:
    name = topic_name(unique_name)
    create(platform, name, subjects=[f"{name}.>"])

    async def publish_over_nats() -> None:
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            for index in range(6):
                cell = "c1" if index % 2 == 0 else "c2"
                await js.publish(f"{name}.{cell}.kpi", f"m{index}".encode(), headers={"K": "v"})
        finally:
            await nc.close()

    asyncio.run(publish_over_nats())
    everything = read(platform, name)
    assert [m["data"] for m in everything] == [f"m{i}" for i in range(6)]
    assert [m["seq"] for m in everything] == [1, 2, 3, 4, 5, 6]
    assert everything[0]["headers"] == {"K": "v"}
    c2 = read(platform, name, subject=f"{name}.c2.kpi")
    assert [m["data"] for m in c2] == ["m1", "m3", "m5"]
    assert [m["data"] for m in read(platform, name, subject=f"{name}.*.kpi", start_seq=4)] == [
        "m3",
        "m4",
        "m5",
    ]
    assert [m["data"] for m in read(platform, name, subject=f"{name}.c1.kpi", start_seq=2)] == [
        "m2",
        "m4",
    ]
    assert [m["seq"] for m in read(platform, name, start_seq=2, limit=2)] == [2, 3]
    assert read(platform, name, start_seq=7) == []
    assert read(platform, name, subject=f"{name}.c3.kpi") == []


def test_max_msgs_per_subject_keeps_only_the_latest(platform: Platform, unique_name) -> None:
    name = topic_name(unique_name)
    create(platform, name, subjects=[f"{name}.*"], max_msgs_per_subject=1)
    for value in range(3):
        publish(platform, name, f"dev1 v{value}".encode(), subject=f"{name}.dev1")
    for value in range(2):
        publish(platform, name, f"dev2 v{value}".encode(), subject=f"{name}.dev2")
    latest = read(platform, name)
    assert [(m["subject"], m["data"]) for m in latest] == [
        (f"{name}.dev1", "dev1 v2"),
        (f"{name}.dev2", "dev2 v1"),
    ]
    assert platform.get(f"/system/topics/{name}").json()["state"]["messages"] == 2


def test_max_msgs_drops_the_oldest(platform: Platform, unique_name) -> None:
    name = topic_name(unique_name)
    create(platform, name, max_msgs=3)
    for value in range(5):
        publish(platform, name, f"v{value}".encode())
    kept = read(platform, name)
    assert [(m["seq"], m["data"]) for m in kept] == [(3, "v2"), (4, "v3"), (5, "v4")]
    state = wait_until(
        lambda: (
            (s := platform.get(f"/system/topics/{name}").json()["state"])["messages"] == 3 and s
        ),
        what="the topic to hold 3 messages",
    )
    assert (state["first_seq"], state["last_seq"]) == (3, 5)


def test_storage_the_node_cannot_set_aside_is_400_on_max_bytes(
    platform: Platform, unique_name
) -> None:
    # JetStream reserves a stream's max_bytes when it is made; no test machine has 100Ti
    name = topic_name(unique_name)
    answer = platform.request("POST", "/system/topics", json={"name": name, "max_bytes": "100Ti"})
    assert answer.status_code == 400, answer.text
    assert answer.json()["field"] == "max_bytes"
    assert "insufficient storage resources" in answer.json()["error"]
    assert "reserves its max_bytes" in answer.json()["error"]
    assert platform.get(f"/system/topics/{name}").status_code == 404


def test_settings_jetstream_cannot_change_are_400_naming_them(
    platform: Platform, unique_name
) -> None:
    name = topic_name(unique_name)
    create(platform, name, storage="memory")
    answer = platform.request("PUT", f"/system/topics/{name}", json={"storage": "file"})
    assert answer.status_code == 400, answer.text
    assert answer.json()["field"] == "storage"
    answer = platform.request(
        "PUT", f"/system/topics/{name}", json={"storage": "memory", "retention": "workqueue"}
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["field"] == "retention"


def test_read_with_a_malformed_subject_is_400(platform: Platform, unique_name) -> None:
    name = topic_name(unique_name)
    create(platform, name)
    answer = platform.get(f"/system/topics/{name}/messages", params={"subject": f"{name}..x"})
    assert answer.status_code == 400, answer.text
    assert answer.json()["field"] == "subject"
    assert "is empty" in answer.json()["error"]


def test_listing_pages_past_256_streams(platform: Platform, unique_name) -> None:
    # the server lists streams 256 at a time; every topic must still be listed
    group = unique_name("page").replace("-", "")
    for index in range(260):
        create(platform, f"{group}.t{index}", storage="memory", max_bytes="64Ki")
    try:
        listed = [t for t in platform.get("/system/topics").json() if t["name"].startswith(group)]
        assert len(listed) == 260
    finally:
        for index in range(260):
            platform.request("DELETE", f"/system/topics/{group}.t{index}")
