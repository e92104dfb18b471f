"""The 5G CHF door (Nchf_ConvergedCharging, TS 32.291 v3) against a real hypercorn server
on loopback, spoken to by httpx over HTTP/2 with prior knowledge (h2c) or TLS.

Requests are shaped like the examples of TS 32.291 / TS 32.255 and like free5GC's SMF
sends them: github.com/free5gc/smf at commit 9a18772de61cc5eb6f305ec127709f49949c171e
(internal/sbi/consumer/chf_service.go buildConvergedChargingRequest,
internal/sbi/processor/charging_trigger.go) with the models of github.com/free5gc/openapi
at 7cb3c041a24fd8322e160e119c1fce4862760d60 (int32 volumes, invocationSequenceNumber
always 0, the reference taken as the last path segment of Location).

Default tariff: rating group 30 is data at 10 micros per started KB (1024 octets),
validity 3600 s, REDIRECT to http://topup.invalid/ as final unit action.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import ssl
import threading
from collections.abc import AsyncIterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from prometheus_client import REGISTRY

from charging.clock import ManualClock
from charging.errors import StartupError
from charging.nchf.listener import NchfListener
from charging.security import certs
from charging.security.tokens import TokenStore
from charging.server import App
from charging.settings import Settings
from tests.conftest import Stubs

IMSI = "262011234567890"
MSISDN = "491700000001"
ROOT = "/nchf-convergedcharging/v3/chargingdata"
KB = 10  # micros per started KB on rating group 30


@pytest.fixture
async def chf(settings: Settings, clock: ManualClock) -> AsyncIterator[App]:
    application = App(dataclasses.replace(settings, nchf_address="127.0.0.1:0"), clock=clock, run_background=False)
    await application.start()
    yield application
    await application.stop()


@pytest.fixture
async def stubs(chf: App) -> AsyncIterator[Stubs]:  # the gRPC stubs of the same server

    channel = grpc.aio.insecure_channel(f"127.0.0.1:{chf.grpc_port}")
    yield Stubs.on(channel)
    await channel.close()


@pytest.fixture
async def http(chf: App) -> AsyncIterator[httpx.AsyncClient]:
    assert chf.nchf is not None
    # HTTP/2 only, in cleartext: prior knowledge, as an SMF speaks to its CHF.
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{chf.nchf.port}", http1=False, http2=True) as client:
        yield client


def request(seq: int, units: list[dict[str, Any]] | None = None, **more: Any) -> dict[str, Any]:
    """A ChargingDataRequest as in TS 32.291 annex / TS 32.255 (PDU session charging)."""
    body: dict[str, Any] = {
        "subscriberIdentifier": f"imsi-{IMSI}",
        "nfConsumerIdentification": {
            "nodeFunctionality": "SMF",
            "nFName": "a6b2c9de-1f2e-4b3a-9c8d-7e6f5a4b3c2d",
            "nFIPv4Address": "192.0.2.10",
        },
        "invocationTimeStamp": f"2026-11-30T12:00:{seq:02d}Z",
        "invocationSequenceNumber": seq,
        "notifyUri": "http://192.0.2.10:8080/nsmf-callback/notify_1",
        "pDUSessionChargingInformation": {
            "chargingId": 123,
            "userInformation": {"servedGPSI": f"msisdn-{MSISDN}"},
            "pduSessionInformation": {"pduSessionID": 5, "dnnId": "internet", "pduType": "IPV4"},
        },
        **more,
    }
    if units is not None:
        body["multipleUnitUsage"] = units
    return body


async def balance(stubs: Stubs) -> tuple[int, int]:
    b = await stubs.balance(MSISDN)
    return b.balance_micros, b.reserved_micros


async def test_create_update_retransmission_release_with_balances(http: httpx.AsyncClient, stubs: Stubs) -> None:
    await stubs.subscriber(MSISDN, balance=1_000_000, imsi=IMSI)
    created = await http.post(
        ROOT, json=request(0, [{"ratingGroup": 30, "requestedUnit": {"totalVolume": 1_048_576}, "uPFID": "upf-a"}])
    )
    assert created.http_version == "HTTP/2"
    assert created.status_code == 201, created.text
    ref = created.headers["location"].rsplit("/", 1)[1]
    assert created.headers["location"].startswith("http://127.0.0.1:")
    body = created.json()
    assert body["invocationSequenceNumber"] == 0
    (unit,) = body["multipleUnitInformation"]
    assert unit["resultCode"] == "SUCCESS"
    assert unit["ratingGroup"] == 30 and unit["uPFID"] == "upf-a"
    assert unit["grantedUnit"] == {"totalVolume": 1_048_576}
    assert unit["validityTime"] == 3600
    assert {t["triggerType"] for t in unit["triggers"]} == {"QUOTA_EXHAUSTED", "VALIDITY_TIME"}
    assert await balance(stubs) == (1_000_000, 1024 * KB)
    # The create again, marked as a retransmission: the same resource, reserved once.
    create = request(0, [{"ratingGroup": 30, "requestedUnit": {"totalVolume": 1_048_576}, "uPFID": "upf-a"}])
    copy = await http.post(ROOT, json={**create, "retransmissionIndicator": True})
    assert copy.status_code == 201 and copy.headers["location"] == created.headers["location"]
    assert copy.json()["multipleUnitInformation"] == body["multipleUnitInformation"]
    assert await balance(stubs) == (1_000_000, 1024 * KB)

    used = {"localSequenceNumber": 1, "totalVolume": 500_000, "uplinkVolume": 100_000, "downlinkVolume": 400_000}
    update = request(1, [{"ratingGroup": 30, "requestedUnit": {"totalVolume": 1_048_576}, "usedUnitContainer": [used]}])
    first = await http.post(f"{ROOT}/{ref}/update", json=update)
    assert first.status_code == 200, first.text
    assert first.json()["multipleUnitInformation"][0]["grantedUnit"] == {"totalVolume": 1_048_576}
    charged = 1_000_000 - 489 * KB  # 500,000 octets = 489 started KB
    assert await balance(stubs) == (charged, 1024 * KB)

    # The same request again (marked as a retransmission): the stored answer, charged once.
    replays = REGISTRY.get_sample_value("charging_nchf_retransmissions_total", {"operation": "update"}) or 0
    ok = REGISTRY.get_sample_value("charging_nchf_requests_total", {"operation": "update", "result": "SUCCESS"})
    again = await http.post(f"{ROOT}/{ref}/update", json={**update, "retransmissionIndicator": True})
    assert again.status_code == 200
    assert again.json()["multipleUnitInformation"] == first.json()["multipleUnitInformation"]
    assert REGISTRY.get_sample_value("charging_nchf_retransmissions_total", {"operation": "update"}) == replays + 1
    labels = {"operation": "update", "result": "SUCCESS"}
    assert REGISTRY.get_sample_value("charging_nchf_requests_total", labels) == (ok or 0) + 1
    assert await balance(stubs) == (charged, 1024 * KB)
    # The same number with another body is refused, changing nothing.
    other = await http.post(f"{ROOT}/{ref}/update", json=request(1, [{"ratingGroup": 30}]))
    assert other.status_code == 400
    assert [p["param"] for p in other.json()["invalidParams"]] == ["/invocationSequenceNumber"]

    final = {
        "localSequenceNumber": 2,
        "totalVolume": 100_000,
        "triggers": [{"triggerType": "FINAL", "triggerCategory": "IMMEDIATE_REPORT"}],
    }
    released = await http.post(
        f"{ROOT}/{ref}/release", json=request(2, [{"ratingGroup": 30, "usedUnitContainer": [final]}])
    )
    assert released.status_code == 204 and released.content == b""
    # 600,000 octets in all = 586 started KB (usage is priced cumulatively in the session).
    assert await balance(stubs) == (1_000_000 - 586 * KB, 0)

    gone = await http.post(f"{ROOT}/{ref}/update", json=request(3, [{"ratingGroup": 30}]))
    assert gone.status_code == 404
    assert gone.headers["content-type"] == "application/problem+json"
    assert gone.json()["cause"] == "CONTEXT_NOT_FOUND"
    unknown = await http.post(f"{ROOT}/{'0' * 32}/update", json=request(1))
    assert unknown.status_code == 404


async def test_free5gc_smf_shapes(http: httpx.AsyncClient, stubs: Stubs) -> None:
    """Every request numbered 0, Go timestamps in nanoseconds, an empty create, the
    reference from Location, int32 volumes, uPFID echoed and triggers on each grant."""
    await stubs.subscriber(MSISDN, balance=100_000_000, imsi=IMSI)
    smf = {"nodeFunctionality": "SMF", "nFName": "SMF", "nFIPv4Address": "127.0.0.2"}

    def body(at: str, units: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "chargingId": -5,  # an int32 cast of a uint32
            "subscriberIdentifier": f"imsi-{IMSI}",
            "nfConsumerIdentification": smf,
            "invocationTimeStamp": at,
            "invocationSequenceNumber": 0,
            "notifyUri": "http://127.0.0.2:8000/nsmf-callback/notify_urn:uuid:1",
            "pDUSessionChargingInformation": {"chargingId": -5, "userInformation": {"servedGPSI": f"msisdn-{MSISDN}"}},
        }
        if units is not None:
            out["multipleUnitUsage"] = units
            out["triggers"] = [t for u in units for c in u.get("usedUnitContainer", []) for t in c["triggers"]]
        return out

    def usage(volume: int, requested: int, trigger: str = "QUOTA_EXHAUSTED") -> dict[str, Any]:
        container: dict[str, Any] = {
            "quotaManagementIndicator": "ONLINE_CHARGING",
            "triggers": [{"triggerType": trigger, "triggerCategory": "IMMEDIATE_REPORT"}],
            "triggerTimestamp": "2026-11-30T20:00:01.5+08:00",
            "localSequenceNumber": 0,
        }
        if volume:
            container |= {"totalVolume": volume, "uplinkVolume": volume // 2, "downlinkVolume": volume - volume // 2}
        req = {"totalVolume": requested, "uplinkVolume": requested, "downlinkVolume": requested}
        return {"ratingGroup": 30, "uPFID": "upf-1", "usedUnitContainer": [container], "requestedUnit": req}

    created = await http.post(ROOT, json=body("2026-11-30T20:00:00.123456789+08:00"))
    assert created.status_code == 201, created.text
    assert "multipleUnitInformation" not in created.json()
    ref = created.headers["location"].split("/")[-1]  # as free5GC takes it

    first = await http.post(f"{ROOT}/{ref}/update", json=body("2026-11-30T20:00:01.000000001+08:00", [usage(0, 1000)]))
    assert first.status_code == 200, first.text
    (unit,) = first.json()["multipleUnitInformation"]
    assert unit["uPFID"] == "upf-1" and unit["grantedUnit"]["totalVolume"] == 1024
    assert {t["triggerType"] for t in unit["triggers"]} >= {"QUOTA_EXHAUSTED", "VALIDITY_TIME"}

    # Numbered 0 again, later: a new request, not a retransmission of the first.
    big = 3_000_000_000  # more than an int32: the grant is clamped to what free5GC can hold
    second = await http.post(f"{ROOT}/{ref}/update", json=body("2026-11-30T20:00:02.5+08:00", [usage(1024, big)]))
    assert second.status_code == 200, second.text
    assert second.json()["multipleUnitInformation"][0]["grantedUnit"]["totalVolume"] == 2**31 - 1
    b, _ = await balance(stubs)
    assert b == 100_000_000 - 1 * KB

    released = await http.post(f"{ROOT}/{ref}/release", json=body("2026-11-30T20:00:03+08:00", [usage(2048, 1000)]))
    assert released.status_code == 204
    assert await balance(stubs) == (100_000_000 - 3 * KB, 0)


async def test_bad_bodies_are_400_naming_every_invalid_parameter(http: httpx.AsyncClient, stubs: Stubs) -> None:
    await stubs.subscriber(MSISDN, balance=1_000_000, imsi=IMSI)
    bad = request(
        0, [{"ratingGroup": "30", "requestedUnit": {"totalVolume": -1}}, {"ratingGroup": 10}, {"ratingGroup": 10}]
    )
    del bad["invocationTimeStamp"]
    bad["nfConsumerIdentification"] = {"nFName": "x"}
    answer = await http.post(ROOT, json=bad)
    assert answer.status_code == 400
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert problem["status"] == 400 and problem["cause"] == "INVALID_MSG_FORMAT"
    assert {p["param"] for p in problem["invalidParams"]} == {
        "/invocationTimeStamp",
        "/nfConsumerIdentification/nodeFunctionality",
        "/multipleUnitUsage/0/ratingGroup",
        "/multipleUnitUsage/0/requestedUnit/totalVolume",
        "/multipleUnitUsage/2/ratingGroup",
    }
    for body, param in (
        (request(0, subscriberIdentifier="nai-someone@example.org"), "/subscriberIdentifier"),
        (request(0, subscriberIdentifier="imsi-12345"), "/subscriberIdentifier"),
        (request(0, invocationTimeStamp="2026-13-45T99:00:00Z"), "/invocationTimeStamp"),
        (request(0, invocationSequenceNumber=2**32), "/invocationSequenceNumber"),
        (
            request(
                0, [{"ratingGroup": 30, "usedUnitContainer": [{"localSequenceNumber": 0, "totalVolume": 2 * 10**12}]}]
            ),
            "/multipleUnitUsage/0/usedUnitContainer/0/totalVolume",
        ),
    ):
        answer = await http.post(ROOT, json=body)
        assert answer.status_code == 400, body
        assert [p["param"] for p in answer.json()["invalidParams"]] == [param]
    garbage = await http.post(ROOT, content=b"{not json")
    assert garbage.status_code == 400 and garbage.json()["invalidParams"][0]["param"] == "/"
    assert (await http.post(ROOT, content=b"x" * 70_000)).status_code == 413
    assert (await http.get(ROOT)).status_code == 405
    assert await balance(stubs) == (1_000_000, 0)


async def test_unknown_subscriber_and_exhausted_credit(http: httpx.AsyncClient, stubs: Stubs) -> None:
    answer = await http.post(ROOT, json=request(0, [{"ratingGroup": 30, "requestedUnit": {}, "uPFID": "u"}]))
    assert answer.status_code == 404
    body = answer.json()
    assert body["invocationResult"]["error"]["cause"] == "USER_UNKNOWN"
    assert body["multipleUnitInformation"] == [{"resultCode": "USER_UNKNOWN", "ratingGroup": 30, "uPFID": "u"}]

    # 5,000 micros buy 500 KB of the 1 MB asked for: a final grant, redirected after it.
    await stubs.subscriber(MSISDN, balance=5_000, imsi=IMSI)
    created = await http.post(ROOT, json=request(0, [{"ratingGroup": 30, "requestedUnit": {"totalVolume": 1_048_576}}]))
    assert created.status_code == 201, created.text
    (unit,) = created.json()["multipleUnitInformation"]
    assert unit["grantedUnit"] == {"totalVolume": 500 * 1024}
    assert unit["finalUnitIndication"] == {
        "finalUnitAction": "REDIRECT",
        "redirectServer": {"redirectAddressType": "URL", "redirectServerAddress": "http://topup.invalid/"},
    }
    ref = created.headers["location"].rsplit("/", 1)[1]
    used = [{"localSequenceNumber": 1, "totalVolume": 500 * 1024}]
    out = await http.post(
        f"{ROOT}/{ref}/update", json=request(1, [{"ratingGroup": 30, "requestedUnit": {}, "usedUnitContainer": used}])
    )
    assert out.status_code == 403
    body = out.json()
    assert body["invocationResult"]["error"]["cause"] == "QUOTA_LIMIT_REACHED"
    assert body["multipleUnitInformation"][0]["resultCode"] == "QUOTA_LIMIT_REACHED"
    assert "grantedUnit" not in body["multipleUnitInformation"][0]
    assert await balance(stubs) == (0, 0)


def test_off_loopback_without_tls_is_refused(settings: Settings) -> None:
    with pytest.raises(StartupError, match=r"Nchf address 0\.0\.0\.0:8090 is not loopback"):
        NchfListener(dataclasses.replace(settings, nchf_address="0.0.0.0:8090"), None)


async def test_tls_and_the_network_role_from_client_certificates(
    settings: Settings, clock: ManualClock, tmp_path: Path
) -> None:
    pki = tmp_path / "pki"
    certs.write_dev_set(pki)
    secured = dataclasses.replace(
        settings,
        nchf_address="127.0.0.1:0",
        tls_cert=str(pki / "server.pem"),
        tls_key=str(pki / "server.key"),
        tls_client_ca=str(pki / "ca.pem"),
        policy_file=str(pki / "policy.json"),
    )
    app = App(secured, clock=clock, run_background=False)
    await app.start()
    try:
        assert app.nchf is not None
        url = f"https://127.0.0.1:{app.nchf.port}"

        def tls(role: str) -> ssl.SSLContext:
            context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
            context.load_cert_chain(str(pki / f"{role}.pem"), str(pki / f"{role}.key"))
            return context

        async with httpx.AsyncClient(base_url=url, http2=True, verify=tls("network")) as network:
            answer = await network.post(ROOT, json=request(0))
            assert answer.http_version == "HTTP/2"
            assert answer.status_code == 404  # authorized: no such subscriber
        async with httpx.AsyncClient(base_url=url, http2=True, verify=tls("crm")) as crm:
            answer = await crm.post(ROOT, json=request(0))
            assert answer.status_code == 403 and answer.json()["cause"] == "UNAUTHORIZED"
        plain = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        async with httpx.AsyncClient(base_url=url, http2=True, verify=plain) as nobody:
            with pytest.raises(httpx.HTTPError):  # no client certificate: no handshake
                await nobody.post(ROOT, json=request(0))

        # A renewed server certificate is served from the next handshake, no restart.
        assert app.nchf.tls_files is not None
        app.nchf.tls_files.check_s = 0.0
        ca = certs.Issued((pki / "ca.pem").read_bytes(), (pki / "ca.key").read_bytes())
        certs.write_pair(pki, "server", certs.issue(ca, "localhost", dns=["localhost"], ips=["127.0.0.1"], server=True))
        renewed = ssl.PEM_cert_to_DER_cert((pki / "server.pem").read_text())

        def served() -> bytes:
            with socket.create_connection(("127.0.0.1", app.nchf.port)) as raw:  # type: ignore[union-attr]
                with tls("network").wrap_socket(raw, server_hostname="localhost") as conn:
                    return conn.getpeercert(binary_form=True) or b""

        assert await asyncio.to_thread(served) == renewed
    finally:
        await app.stop()


async def test_bearer_tokens_without_client_certificates(
    settings: Settings, clock: ManualClock, tmp_path: Path
) -> None:
    pki = tmp_path / "pki"
    certs.write_dev_set(pki)
    secured = dataclasses.replace(
        settings,
        nchf_address="127.0.0.1:0",
        tls_cert=str(pki / "server.pem"),
        tls_key=str(pki / "server.key"),
        policy_file=str(pki / "policy.json"),
    )
    app = App(secured, clock=clock, run_background=False)
    await app.start()
    try:
        assert app.nchf is not None and app.redis is not None
        tokens = TokenStore(app.redis)
        smf = await tokens.create("smf-1", ("network",), (), 0)
        watcher = await tokens.create("watcher", ("monitor",), (), 0)
        verify = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        async with httpx.AsyncClient(base_url=f"https://127.0.0.1:{app.nchf.port}", http2=True, verify=verify) as c:
            assert (await c.post(ROOT, json=request(0))).status_code == 401
            denied = await c.post(ROOT, json=request(0), headers={"authorization": f"Bearer {watcher}"})
            assert denied.status_code == 403
            allowed = await c.post(ROOT, json=request(0), headers={"authorization": f"Bearer {smf}"})
            assert allowed.status_code == 404 and allowed.json()["invocationResult"]["error"]["cause"] == "USER_UNKNOWN"
    finally:
        await app.stop()


class NrfStandIn:
    """A real HTTP server answering Nnrf_NFManagement as an NRF does, recording each
    request (method, path, JSON body)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, Any]] = []
        self.instances: set[str] = set()
        seen, instances = self.seen, self.instances

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                seen.append((self.command, self.path, body))
                known = self.path in instances
                if self.command == "PUT":
                    instances.add(self.path)
                    status = 200 if known else 201
                elif self.command == "DELETE":
                    instances.discard(self.path)
                    status = 204
                else:
                    status = 204 if known else 404
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            do_PUT = do_PATCH = do_DELETE = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def test_registers_in_the_nrf_and_deregisters_on_stop(settings: Settings, clock: ManualClock) -> None:
    nrf = NrfStandIn()
    try:
        app = App(
            dataclasses.replace(settings, nchf_address="127.0.0.1:0", nchf_nrf_url=nrf.url + "/"),
            clock=clock,
            run_background=False,
        )
        await app.start()
        try:
            assert app.nchf is not None and app.nchf.nrf is not None
            # The nrf job's first pass, started with the server: yield to it (no timing).
            while not app.nchf.nrf.registered:  # noqa: ASYNC110
                await asyncio.sleep(0)
            method, path, profile = nrf.seen[0]
            assert (method, path) == ("PUT", f"/nnrf-nfm/v1/nf-instances/{profile['nfInstanceId']}")
            assert profile["nfType"] == "CHF" and profile["ipv4Addresses"] == ["127.0.0.1"]
            (service,) = profile["nfServices"]
            assert service["serviceName"] == "nchf-convergedcharging"
            assert service["apiPrefix"] == f"http://127.0.0.1:{app.nchf.port}"
            assert service["versions"][0]["apiVersionInUri"] == "v3"
            # A heartbeat; an NRF that forgot the instance gets it registered again.
            await app.nchf.nrf.keep_registered()
            assert nrf.seen[-1][0] == "PATCH"
            nrf.instances.clear()
            await app.nchf.nrf.keep_registered()
            assert [m for m, _, _ in nrf.seen[-2:]] == ["PATCH", "PUT"]
        finally:
            await app.stop()
        assert nrf.seen[-1][:2] == ("DELETE", path) and not nrf.instances
    finally:
        nrf.close()


async def test_stop_refuses_new_connections_and_drains_requests_in_flight(
    chf: App, http: httpx.AsyncClient, stubs: Stubs
) -> None:
    await stubs.subscriber(MSISDN, balance=1_000_000, imsi=IMSI)
    assert chf.nchf is not None
    port = chf.nchf.port
    whole = json.dumps(request(0, [{"ratingGroup": 30, "requestedUnit": {}}])).encode()
    gate = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:  # half the body, then the rest once let through
        yield whole[:40]
        await gate.wait()
        yield whole[40:]

    def in_flight() -> float:
        return REGISTRY.get_sample_value("charging_nchf_requests_in_flight") or 0.0

    before = in_flight()
    pending = asyncio.create_task(http.post(ROOT, content=body(), headers={"content-type": "application/json"}))
    while in_flight() == before:  # noqa: ASYNC110 (yields until the server is inside the request)
        await asyncio.sleep(0)
    stopping = asyncio.create_task(chf.nchf.stop(grace_s=30.0))
    while chf.nchf.serving:  # noqa: ASYNC110 (yields until the stop has closed the listening socket)
        await asyncio.sleep(0)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", http1=False, http2=True) as late:
        with pytest.raises(httpx.ConnectError):
            await late.post(ROOT, json=request(0))
    assert not stopping.done()  # still draining the request in flight
    gate.set()
    answer = await pending
    assert answer.status_code == 201, answer.text
    await stopping
    assert await balance(stubs) == (1_000_000, 10 * 1024 * KB)  # the default quota, 10 MiB, held


async def test_one_connection_carries_more_than_a_thousand_requests(http: httpx.AsyncClient) -> None:
    """An SMF keeps one HTTP/2 connection for all its sessions: the 1,001st request on it
    is answered like the first (hypercorn's default cut the connection there, and the
    request with it)."""
    in_flight = asyncio.Semaphore(50)

    async def one(n: int) -> int:
        async with in_flight:
            answer = await http.get(f"/nchf-convergedcharging/v3/chargingdata/no-such-{n}")
            return answer.status_code

    codes = await asyncio.gather(*(one(n) for n in range(1_050)))
    assert set(codes) <= {404, 405}
