"""Every step kind, run in small sims in real labs: run, spawn (ready_after), wait-for, wait,
set-link-condition, link-down/up, set-default-route, gen-certs, gen-file, assert; captures from
both pipes, requires, env, when, counted devices, regions; and how failures are reported."""

from __future__ import annotations

import ipaddress
import json
import os
import time
from pathlib import Path

import pytest
from cryptography import x509

from tests.sims.helpers import EMIT, run, sim_text

pytestmark = pytest.mark.anyio


def sim_json(result_dir: Path, name: str = "t") -> dict:
    return json.loads((result_dir / name / "sim.json").read_text())


async def test_run_spawn_wait_for_captures_requires_env_assert(tmp_path: Path) -> None:
    text = sim_text(f"""
        [[step]]
        action = "spawn"
        id = "srv"
        device = "b"
        cmd = [{EMIT}, "out:port 5000", "err:ready", "sleep:0.3", "out:bye"]
        ready_after = "100ms"
        [step.captures.port]
        regex = "port (\\\\d+)"
        [step.captures.ready]
        pipe = "stderr"
        regex = "ready"

        [[step]]
        action = "run"
        id = "cli"
        device = "a"
        requires = ["srv.ready"]
        parser = "ndjson"
        env = {{ PORT = "${{srv.port}}", WHO = "$NETSIM_IP_b" }}
        cmd = [{EMIT}, 'out:{{"kind": "Hello", "port": "${{srv.port}}"}}', "env:PORT", "env:WHO", "env:NETSIM_IP_A",
               'out:{{"kind": "Size", "size": 10}}', 'out:{{"kind": "Size", "size": 20}}']
        [step.captures.port]
        match = {{ kind = "Hello" }}
        pick = ".port"
        [step.captures.size]
        match = {{ kind = "Size" }}
        pick = ".size"
        [step.captures.who]
        regex = "WHO=(.*)"
        [step.captures.me]
        regex = "NETSIM_IP_A=(.*)"

        [[step]]
        action = "wait-for"
        id = "srv"
        timeout = "5s"

        [[step]]
        action = "assert"
        checks = ["cli.port == 5000", "cli.size == 20", "srv.port >= 5000", "cli.who == $NETSIM_IP_b",
                  "cli.me != ${{cli.who}}"]
    """)
    result = await run(tmp_path, text)
    (record,) = result.records
    assert result.ok, record.error
    info = sim_json(result.output.root)
    caps = info["captures"]
    assert caps["srv.port"] == "5000" and caps["srv.ready"] == "ready" and caps["cli.size"] == "20"
    b_ip, a_ip = caps["cli.who"], caps["cli.me"]
    assert ipaddress.ip_address(b_ip) and ipaddress.ip_address(a_ip) and a_ip != b_ip
    assert [s["status"] for s in info["steps"]] == ["ok", "ok", "ok", "ok"]
    nodes = result.output.root / "t" / "nodes"
    assert (nodes / "b" / "stdout.log").read_text() == "port 5000\nbye\n"
    assert (nodes / "b" / "stderr.log").read_text() == "ready\n"
    assert "PORT=5000" in (nodes / "a" / "stdout.log").read_text()
    assert {e["path"] for e in info["logs"]} == {"nodes/a/stdout.log", "nodes/b/stdout.log", "nodes/b/stderr.log"}
    assert all(e["bytes"] > 0 for e in info["logs"])


async def test_failing_assert_names_the_expression_the_value_and_the_step(tmp_path: Path) -> None:
    text = sim_text(f"""
        [[step]]
        id = "probe"
        device = "a"
        cmd = [{EMIT}, "out:rtt 12.5"]
        [step.captures.rtt]
        regex = "rtt ([\\\\d.]+)"

        [[step]]
        id = "check-rtt"
        action = "assert"
        checks = [
          "probe.rtt > 10",
          "probe.rtt >= 50",
        ]
    """)
    result = await run(tmp_path, text)
    (record,) = result.records
    assert record.status == "error" and not result.ok
    message = record.error["message"]
    line = text.splitlines().index('  "probe.rtt >= 50",') + 1
    assert message.endswith(f"sim.toml:{line} (step check-rtt): step[1].checks[1]: assertion failed: "
                            "'probe.rtt >= 50': probe.rtt is '12.5'")
    assert record.error["line"] == line and record.error["key"] == "step[1].checks[1]"
    assert record.error["step"] == {"index": 1, "action": "assert", "id": "check-rtt", "device": None}
    info = sim_json(result.output.root)
    assert info["status"] == "error" and info["errors"] == [info["error"]]
    assert [s["status"] for s in info["steps"]] == ["ok", "error"]


async def test_capture_never_produced_times_out_with_its_name(tmp_path: Path) -> None:
    text = sim_text(f"""
        [[step]]
        action = "spawn"
        id = "srv"
        device = "b"
        cmd = [{EMIT}, "out:starting", "sleep:30"]
        [step.captures.port]
        regex = "port (\\\\d+)"

        [[step]]
        id = "cli"
        device = "a"
        cmd = ["echo", "${{srv.port}}"]
        timeout = "1s"
    """)
    t0 = time.monotonic()
    result = await run(tmp_path, text)
    assert time.monotonic() - t0 < 5  # the spawned sleep was stopped, not waited for
    (record,) = result.records
    assert record.status == "error"
    assert "(step cli): step[1].cmd: timed out after 1.0s waiting for capture 'srv.port' (step 'srv' is still " \
           "running" in record.error["message"]


async def test_capture_of_an_exited_producer_fails_at_once(tmp_path: Path) -> None:
    text = sim_text(f"""
        [[step]]
        action = "spawn"
        id = "srv"
        device = "b"
        cmd = [{EMIT}, "out:no port today"]
        [step.captures.port]
        regex = "port (\\\\d+)"

        [[step]]
        id = "cli"
        device = "a"
        requires = ["srv.port"]
        cmd = ["true"]
    """)
    t0 = time.monotonic()
    result = await run(tmp_path, text)
    assert time.monotonic() - t0 < 5
    assert "required capture 'srv.port' was never produced: step 'srv' exited with status 0 without it" in \
        result.records[0].error["message"]


async def test_run_that_fails_reports_status_and_stderr(tmp_path: Path) -> None:
    text = sim_text(f'[[step]]\nid = "bad"\ndevice = "a"\ncmd = [{EMIT}, "err:boom: no such thing", "exit:3"]\n'
                    '[[step]]\naction = "wait"\nduration = "10s"\n')
    result = await run(tmp_path, text)
    message = result.records[0].error["message"]
    assert "(step bad): step[0].cmd:" in message and "on 'a' exited with status 3" in message
    assert "boom: no such thing" in message
    assert [s["status"] for s in sim_json(result.output.root)["steps"]] == ["error", "pending"]


async def test_when_false_skips_and_wait_sleeps(tmp_path: Path) -> None:
    text = "[matrix]\nx = [\"on\"]\n[matrix.params.x]\non = { bad = \"false\" }\n" + sim_text("""
        [[step]]
        when = "${matrix.bad}"
        device = "a"
        cmd = ["false"]
        [[step]]
        action = "wait"
        duration = "300ms"
    """)
    t0 = time.monotonic()
    result = await run(tmp_path, text)
    assert result.ok and time.monotonic() - t0 >= 0.3
    assert [s["status"] for s in sim_json(result.output.root)["steps"]] == ["skipped", "ok"]
    assert result.records[0].steps_total == 1


PING = '["ping", "-c", "2", "-i", "0.2", "-W", "1", "$NETSIM_IP_b"]'
RTT = '[step.captures.rtt]\nregex = "rtt min/avg/max/mdev = [\\\\d.]+/([\\\\d.]+)/"\n'


async def test_link_condition_link_down_up(tmp_path: Path) -> None:
    text = sim_text(f"""
        [[step]]
        action = "set-link-condition"
        device = "a"
        condition = {{ latency_ms = "120" }}
        [[step]]
        id = "slow"
        device = "a"
        cmd = {PING}
        {RTT}
        [[step]]
        action = "set-impair"
        device = "a"
        interface = "eth0"
        [[step]]
        id = "fast"
        device = "a"
        cmd = {PING}
        {RTT}
        [[step]]
        action = "link-down"
        device = "a"
        [[step]]
        id = "down"
        device = "a"
        cmd = ["sh", "-c", "ping -c 1 -W 1 $NETSIM_IP_b; echo status=$?"]
        [step.captures.status]
        regex = "status=(\\\\d+)"
        [[step]]
        action = "link-up"
        device = "a"
        interface = "eth0"
        [[step]]
        id = "up"
        device = "a"
        cmd = {PING}
        {RTT}
        [[step]]
        action = "assert"
        checks = ["slow.rtt >= 120", "fast.rtt < 50", "down.status != 0", "up.rtt < 50"]
    """)
    result = await run(tmp_path, text)
    assert result.ok, result.records[0].error


async def test_set_default_route(tmp_path: Path) -> None:
    topo = """
        [[router]]
        name = "dc"
        [[router]]
        name = "isp"
        [device.m.eth0]
        gateway = "dc"
        [device.m.eth1]
        gateway = "isp"
        [device.b.eth0]
        gateway = "dc"
    """
    route = '["cat", "/proc/net/route"]\n[step.captures.via]\nregex = "^(\\\\w+)\\\\s+00000000"\n'
    text = sim_text(f"""
        [[step]]
        id = "before"
        device = "m"
        cmd = {route}
        [[step]]
        action = "set-default-route"
        device = "m"
        to = "eth1"
        [[step]]
        id = "after"
        device = "m"
        cmd = {route}
        [[step]]
        action = "assert"
        checks = ["before.via == eth0", "after.via == eth1"]
    """, topology=topo)
    result = await run(tmp_path, text)
    assert result.ok, result.records[0].error


async def test_gen_certs_and_gen_file(tmp_path: Path) -> None:
    text = sim_text("""
        [[step]]
        action = "gen-certs"
        id = "relay-cert"
        device = "b"
        cn = "relay"
        san = ["$NETSIM_IP_a", "relay.example", "10.9.9.9"]
        [[step]]
        action = "gen-file"
        id = "cfg"
        content = '''
        cert = "${relay-cert.cert_pem_path}"
        key = "${relay-cert.key_pem_path}"
        peer = $NETSIM_IP_a
        '''
        [[step]]
        device = "a"
        id = "show"
        cmd = ["cat", "${cfg.path}"]
        [step.captures.peer]
        regex = "peer = (.*)"
        [[step]]
        action = "assert"
        checks = ["show.peer == $NETSIM_IP_a", "cfg.path contains files/cfg/content"]
    """)
    result = await run(tmp_path, text)
    assert result.ok, result.records[0].error
    d = result.output.root / "t"
    caps = sim_json(result.output.root)["captures"]
    assert caps["relay-cert.cert_pem_path"] == str(d / "certs" / "relay-cert" / "cert.pem")
    assert caps["relay-cert.key_pem_path"] == str(d / "certs" / "relay-cert" / "key.pem")
    assert caps["cfg.path"] == str(d / "files" / "cfg" / "content")
    content = (d / "files" / "cfg" / "content").read_text()
    assert content == f'cert = "{d}/certs/relay-cert/cert.pem"\nkey = "{d}/certs/relay-cert/key.pem"\npeer = ' \
                      f'{caps["show.peer"]}\n'
    cert = x509.load_pem_x509_certificate((d / "certs" / "relay-cert" / "cert.pem").read_bytes())
    assert cert.subject.rfc4514_string() == "CN=relay" and cert.issuer == cert.subject
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    assert len(ips) == 3 and {caps["show.peer"], "10.9.9.9"} <= ips  # b's own address, a's, the literal one
    assert san.get_values_for_type(x509.DNSName) == ["relay.example"]
    assert oct(os.stat(d / "certs" / "relay-cert" / "key.pem").st_mode & 0o777) == "0o600"


async def test_counted_devices_run_once_each(tmp_path: Path) -> None:
    topo = """
        [[router]]
        name = "dc"
        [device.server.eth0]
        gateway = "dc"
        [device.fetcher]
        count = 3
        [device.fetcher.eth0]
        gateway = "dc"
    """
    text = sim_text(f"""
        [[step]]
        action = "spawn"
        id = "fetcher"
        device = "fetcher"
        cmd = [{EMIT}, "out:me $NETSIM_IP_fetcher", "out:bytes 1000000", "out:took 2000000"]
        [step.captures.me]
        regex = "me (.*)"
        [step.captures.bytes]
        regex = "bytes (\\\\d+)"
        [step.captures.us]
        regex = "took (\\\\d+)"
        [step.results]
        down_bytes = ".bytes"
        duration = ".us"
        [[step]]
        action = "wait-for"
        id = "fetcher"
        [[step]]
        action = "assert"
        checks = ["fetcher.bytes == 1000000"]
    """, topology=topo)
    result = await run(tmp_path, text)
    (record,) = result.records
    assert result.ok, record.error
    assert [r.id for r in record.results] == ["fetcher-0", "fetcher-1", "fetcher-2"]
    assert all(r.down_mb_s() == 0.5 for r in record.results)
    caps = sim_json(result.output.root)["captures"]
    assert len({caps[f"fetcher-{i}.me"] for i in range(3)}) == 3


async def test_regions_add_their_latency(tmp_path: Path) -> None:
    topo = """
        [region.eu]
        latencies = { us = 40 }
        [[router]]
        name = "dc-eu"
        region = "eu"
        [[router]]
        name = "dc-us"
        region = "us"
        [device.a.eth0]
        gateway = "dc-eu"
        [device.b.eth0]
        gateway = "dc-us"
    """
    text = sim_text(f'[[step]]\nid = "p"\ndevice = "a"\ncmd = {PING}\n{RTT}'
                    '[[step]]\naction = "assert"\ncheck = "p.rtt >= 80"\n', topology=topo)
    result = await run(tmp_path, text)
    assert result.ok, result.records[0].error


async def test_spawn_left_running_is_stopped_and_its_results_kept(tmp_path: Path) -> None:
    text = sim_text(f"""
        [[step]]
        action = "spawn"
        id = "srv"
        device = "b"
        cmd = [{EMIT}, "out:latency 3.5", "sleep:60"]
        [step.captures.lat]
        regex = "latency ([\\\\d.]+)"
        [step.results]
        latency_ms = "srv.lat"
        [[step]]
        action = "wait"
        duration = "200ms"
    """)
    t0 = time.monotonic()
    result = await run(tmp_path, text)
    assert result.ok and time.monotonic() - t0 < 5
    assert [(r.id, r.latency_ms) for r in result.records[0].results] == [("srv", "3.5")]
    events = [json.loads(line) for line in (result.output.root / "t" / "events.jsonl").read_text().splitlines()]
    kinds = [e["kind"] for e in events]
    assert "step_process_stopping" in kinds and kinds.index("step_process_stopping") < kinds.index("lab_closed")


async def test_sims_run_in_parallel_with_jobs(tmp_path: Path) -> None:
    text = ('[matrix]\nn = ["1", "2", "3"]\n' + sim_text('[[step]]\naction = "wait"\nduration = "1s"\n',
                                                         name="w-${matrix.n}"))
    t0 = time.monotonic()
    result = await run(tmp_path, text, jobs=3)
    assert result.ok and [r.name for r in result.records] == ["w-1", "w-2", "w-3"]
    assert time.monotonic() - t0 < 2.8
    starts = sorted(r.started or 0 for r in result.records)
    assert starts[-1] - starts[0] < 0.9  # all three at once, each in its own lab


async def test_ipv6_devices_have_netsim_ip_variables(tmp_path: Path) -> None:
    topo = """
        [[router]]
        name = "dc"
        ip_support = "dual-stack"
        [[router]]
        name = "carrier"
        preset = "isp-v6"
        [device.server.eth0]
        gateway = "dc"
        [device.phone.eth0]
        gateway = "carrier"
    """
    text = sim_text("""
        [[step]]
        id = "ping6"
        device = "phone"
        cmd = ["ping", "-6", "-c", "1", "-W", "2", "$NETSIM_IP6_SERVER"]
        [[step]]
        id = "addr"
        device = "phone"
        cmd = ["echo", "$NETSIM_IP_PHONE"]
        [step.captures.ip]
        regex = "^(\\\\S+)$"
        [[step]]
        action = "assert"
        checks = ["addr.ip contains 2001:db8:"]
    """, topology=topo)
    result = await run(tmp_path, text)
    assert result.ok, result.records[0].error
