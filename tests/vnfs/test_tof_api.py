"""The TOF /service REST API (seed 002 §4.3.4): every route, status code and error path."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from nfaas.vnfs.tof import ServiceApi, ServiceRegistry

SVC, APP = "198.19.50.1", "198.18.200.10"
SVC2, APP2 = "198.19.50.2", "198.18.200.20"


def body(
    name: Any = "cache", service_ip: Any = SVC, application_ip: Any = APP, **extra: Any
) -> bytes:
    doc = {"name": name, "serviceIP": service_ip, "applicationIP": application_ip, **extra}
    return json.dumps(doc).encode()


def call(
    api: ServiceApi, method: str, path: str, payload: bytes = b""
) -> tuple[int, Any, dict[str, str]]:
    status, headers, raw = api.handle(method, path, payload)
    head = dict(headers)
    assert head["content-type"] == "application/json"
    return status, json.loads(raw), head


@pytest.fixture
def api() -> ServiceApi:
    return ServiceApi(ServiceRegistry())


def test_create_list_update_delete(api: ServiceApi) -> None:
    assert call(api, "GET", "/service") == (200, [], {"content-type": "application/json"})
    status, doc, _ = call(api, "POST", "/service", body())
    assert status == 200 and doc == {"name": "cache", "serviceIP": SVC, "applicationIP": APP}
    call(api, "POST", "/service", body("video", SVC2, APP2))
    status, doc, _ = call(api, "GET", "/service")
    assert status == 200 and [s["name"] for s in doc] == ["cache", "video"]
    status, doc, _ = call(
        api, "PUT", "/service/cache", body("cache", "198.19.50.3", "198.18.200.30")
    )
    assert status == 200 and doc["serviceIP"] == "198.19.50.3"
    assert call(api, "GET", "/service")[1][0]["applicationIP"] == "198.18.200.30"
    status, doc, _ = call(api, "DELETE", "/service/cache")
    assert status == 200 and doc["name"] == "cache"
    assert [s["name"] for s in call(api, "GET", "/service")[1]] == ["video"]


def test_delete_by_service_ip_and_name_takes_precedence(api: ServiceApi) -> None:
    call(api, "POST", "/service", body("video", SVC2, APP2))
    call(api, "POST", "/service", body(SVC2, SVC, APP))  # a service named like the other's IP
    status, doc, _ = call(api, "DELETE", f"/service/{SVC2}")
    assert status == 200 and doc["name"] == SVC2
    status, doc, _ = call(api, "DELETE", f"/service/{SVC2}")
    assert status == 200 and doc["name"] == "video"
    assert call(api, "GET", "/service")[1] == []


def test_update_may_keep_its_own_addresses(api: ServiceApi) -> None:
    call(api, "POST", "/service", body())
    assert call(api, "PUT", "/service/cache", body())[0] == 200


def test_addresses_are_returned_in_canonical_form(api: ServiceApi) -> None:
    status, doc, _ = call(api, "POST", "/service", body("a", " 198.19.50.1", APP))
    assert status == 400 and doc["field"] == "serviceIP"  # no stray spaces
    status, doc, _ = call(api, "POST", "/service", body("a", SVC, APP))
    assert doc["serviceIP"] == SVC


def test_percent_encoded_names_in_the_path(api: ServiceApi) -> None:
    call(api, "POST", "/service", body("video cache"))
    assert call(api, "PUT", "/service/video%20cache", body("video cache", SVC2, APP2))[0] == 200
    assert call(api, "DELETE", "/service/video%20cache?force=1")[0] == 200


# -- 404 / 405 / 409 --------------------------------------------------------------------------


def test_not_found(api: ServiceApi) -> None:
    status, doc, _ = call(api, "PUT", "/service/nope", body("nope"))
    assert status == 404 and "nope" in doc["error"]
    status, doc, _ = call(api, "DELETE", "/service/nope")
    assert status == 404 and "nope" in doc["error"]
    for path in ("/", "/services", "/service/a/b", "/service/", "/Service"):
        assert call(api, "GET", path)[0] == 404, path


def test_methods_outside_the_seed_are_not_allowed(api: ServiceApi) -> None:
    call(api, "POST", "/service", body())
    for method, path, allow in (
        ("DELETE", "/service", "GET, POST"),
        ("PUT", "/service", "GET, POST"),
        ("PATCH", "/service", "GET, POST"),
        ("GET", "/service/cache", "PUT, DELETE"),  # the seed defines no GET of one service
        ("POST", "/service/cache", "PUT, DELETE"),
    ):
        status, doc, head = call(api, method, path, body())
        assert status == 405 and head["allow"] == allow and method in doc["error"]


def test_conflicts(api: ServiceApi) -> None:
    call(api, "POST", "/service", body())
    call(api, "POST", "/service", body("video", SVC2, APP2))
    for payload, what in (
        (body("cache", "198.19.50.9", "198.18.200.90"), "cache"),  # name taken
        (body("other", SVC, "198.18.200.90"), SVC),  # serviceIP taken
        (body("other", "198.19.50.9", APP), APP),  # applicationIP taken
    ):
        status, doc, _ = call(api, "POST", "/service", payload)
        assert status == 409 and what in doc["error"]
    status, doc, _ = call(api, "PUT", "/service/video", body("video", SVC, APP2))
    assert status == 409 and SVC in doc["error"]
    status, doc, _ = call(api, "PUT", "/service/video", body("video", SVC2, APP))
    assert status == 409 and APP in doc["error"]
    assert len(call(api, "GET", "/service")[1]) == 2


# -- 400 --------------------------------------------------------------------------------------

BAD_BODIES = [
    (b"", None, "empty"),
    (b"   ", None, "empty"),
    (b"{", None, "line 1 column 2"),
    (b'{"name": "a",\n "serviceIP": }', None, "line 2 column 15"),
    (b"\xff\xfe{}", None, "byte offset 0"),
    (b"[]", None, "object"),
    (b'"cache"', None, "object"),
    (b"null", None, "object"),
    (json.dumps({"name": "a", "serviceIP": SVC}).encode(), "applicationIP", "missing"),
    (json.dumps({"serviceIP": SVC, "applicationIP": APP}).encode(), "name", "missing"),
    (body(extra=1), "extra", "unknown field"),
    (body(name=7), "name", "string"),
    (body(service_ip=None), "serviceIP", "string"),
    (body(application_ip=["198.18.0.1"]), "applicationIP", "string"),
    (body(name=""), "name", "empty"),
    (body(name="a/b"), "name", "'/'"),
    (body(name="a\nb"), "name", "'\\n'"),
    (body(name="x" * 65), "name", "64"),
    (body(service_ip="198.19.50"), "serviceIP", "not an IPv4 address"),
    (body(service_ip="198.19.50.256"), "serviceIP", "not an IPv4 address"),
    (body(service_ip="2001:db8::1"), "serviceIP", "IPv6"),
    (body(application_ip="224.0.0.1"), "applicationIP", "unicast"),
    (body(application_ip="0.0.0.0"), "applicationIP", "unicast"),
    (body(application_ip="127.0.0.1"), "applicationIP", "unicast"),
    (body(application_ip="255.255.255.255"), "applicationIP", "unicast"),
    (body(service_ip="010.1.1.1"), "serviceIP", "not an IPv4 address"),
]


@pytest.mark.parametrize(("payload", "field", "words"), BAD_BODIES)
@pytest.mark.parametrize(("method", "path"), [("POST", "/service"), ("PUT", "/service/a")])
def test_bad_requests_name_what_is_wrong(
    api: ServiceApi, method: str, path: str, payload: bytes, field: str | None, words: str
) -> None:
    call(api, "POST", "/service", body("a", SVC2, APP2))
    status, doc, _ = call(api, method, path, payload)
    assert status == 400, doc
    assert words in doc["error"]
    assert doc.get("field") == field
    assert len(call(api, "GET", "/service")[1]) == 1  # nothing changed


def test_put_with_another_name_in_the_body_is_a_bad_request(api: ServiceApi) -> None:
    call(api, "POST", "/service", body())
    status, doc, _ = call(api, "PUT", "/service/cache", body("video", SVC2, APP2))
    assert status == 400 and doc["field"] == "name" and "video" in doc["error"]


def test_bad_request_wins_over_not_found(api: ServiceApi) -> None:
    assert call(api, "PUT", "/service/ghost", b"{")[0] == 400


# -- properties ---------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
ipv4_text = st.ip_addresses(v=4).map(str)
maybe_fields = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(st.text(max_size=70), json_values),
        "serviceIP": st.one_of(ipv4_text, st.text(max_size=20), json_values),
        "applicationIP": st.one_of(ipv4_text, st.ip_addresses(v=6).map(str), json_values),
    },
)
documents = st.one_of(
    maybe_fields,
    st.dictionaries(st.sampled_from(["name", "serviceIP", "applicationIP", "x"]), json_values),
    json_values,
)


@settings(max_examples=400, deadline=None)
@given(doc=documents, method=st.sampled_from(["POST", "PUT"]))
def test_any_json_body_gets_a_clean_answer(doc: Any, method: str) -> None:
    api = ServiceApi(ServiceRegistry())
    status, _headers, raw = api.handle(
        method, "/service" if method == "POST" else "/service/n", json.dumps(doc).encode()
    )
    answer = json.loads(raw)
    assert status in (200, 400, 404)
    extra = set(doc) - {"name", "serviceIP", "applicationIP"} if isinstance(doc, dict) else set()
    if status == 400:
        assert answer["error"]
        if isinstance(doc, dict):  # every problem of an object is one field's
            assert answer["field"] in (extra or {"name", "serviceIP", "applicationIP"})
        else:
            assert "field" not in answer
    if status == 200:
        assert method == "POST" and not extra
        assert answer["name"] == doc["name"]
        for key in ("serviceIP", "applicationIP"):
            assert answer[key] == str(ipaddress.IPv4Address(doc[key]))


@settings(max_examples=300, deadline=None)
@given(
    raw=st.binary(max_size=200),
    method=st.sampled_from(["POST", "PUT", "DELETE", "GET", "HEAD"]),
    path=st.text(max_size=30),
)
def test_arbitrary_requests_never_raise(raw: bytes, method: str, path: str) -> None:
    api = ServiceApi(ServiceRegistry())
    status, _headers, answer = api.handle(method, path, raw)
    assert status in (200, 400, 404, 405, 409)
    json.loads(answer)


NAMES = ["a", "b", "c"]
IPS = ["198.19.0.1", "198.19.0.2", "198.19.0.3", "198.18.0.1", "198.18.0.2", "198.18.0.3"]


class ApiAgainstAModel(RuleBasedStateMachine):
    """Random create/update/delete sequences behave like a dict with unique addresses."""

    def __init__(self) -> None:
        super().__init__()
        self.api = ServiceApi(ServiceRegistry())
        self.model: dict[str, tuple[str, str]] = {}

    def taken(self, svc: str, app: str, ignore: str | None) -> bool:
        return any((s == svc or a == app) for name, (s, a) in self.model.items() if name != ignore)

    @rule(name=st.sampled_from(NAMES), svc=st.sampled_from(IPS), app=st.sampled_from(IPS))
    def create(self, name: str, svc: str, app: str) -> None:
        status, _, _ = call(self.api, "POST", "/service", body(name, svc, app))
        if name in self.model or self.taken(svc, app, None):
            assert status == 409
        else:
            assert status == 200
            self.model[name] = (svc, app)

    @rule(name=st.sampled_from(NAMES), svc=st.sampled_from(IPS), app=st.sampled_from(IPS))
    def update(self, name: str, svc: str, app: str) -> None:
        status, _, _ = call(self.api, "PUT", f"/service/{name}", body(name, svc, app))
        if name not in self.model:
            assert status == 404
        elif self.taken(svc, app, name):
            assert status == 409
        else:
            assert status == 200
            self.model[name] = (svc, app)

    @rule(key=st.sampled_from(NAMES + IPS))
    def delete(self, key: str) -> None:
        status, doc, _ = call(self.api, "DELETE", f"/service/{key}")
        name = (
            key
            if key in self.model
            else next((n for n, (s, _) in self.model.items() if s == key), None)
        )
        if name is None:
            assert status == 404
        else:
            assert status == 200 and doc["name"] == name
            del self.model[name]

    @invariant()
    def listing_matches(self) -> None:
        status, doc, _ = call(self.api, "GET", "/service")
        assert status == 200
        assert {s["name"]: (s["serviceIP"], s["applicationIP"]) for s in doc} == self.model


TestApiAgainstAModel = ApiAgainstAModel.TestCase
TestApiAgainstAModel.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)
