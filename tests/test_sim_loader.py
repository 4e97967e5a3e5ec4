"""Loading sims (no kernel): the book's examples, extends and its search order, matrix with
params and `when`, templates, groups with two-stage substitution, counted devices, defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

import patchbay_core as pb
from patchbay_core.sim import load_sims
from tests.sims.helpers import BOOK, REPO, TWO_HOSTS, load, load_one, sim_text, write


def test_the_books_examples_load_unchanged() -> None:
    (iperf,) = load_sims(BOOK / "iperf-baseline.toml")
    assert iperf.name == "iperf-baseline" and iperf.topology_ref == "1to1-public"
    assert [s.label() for s in iperf.steps] == ["spawn iperf-server @provider", "run iperf-run @fetcher",
                                                "wait-for iperf-server", "assert"]
    run = iperf.steps[1]
    assert run.parser == "json" and set(run.captures) == {"bytes", "seconds"}
    assert run.captures["bytes"].pick == ".end.sum_received.bytes"
    assert run.results is not None and run.results.keys() == {"duration": "iperf-run.seconds",
                                                              "down_bytes": "iperf-run.bytes"}
    assert iperf.steps[0].ready_after == 1.0 and iperf.steps[2].timeout is None

    (ping,) = load_sims(BOOK / "ping-latency.toml")
    assert ping.topology_ref is None and [d.name for d in ping.topology.devices] == ["sender", "receiver"]
    assert ping.steps[0].captures["avg_rtt"].regex.pattern == r"rtt min/avg/max/mdev = [\d.]+/([\d.]+)/"

    (iroh,) = load_sims(BOOK / "iroh-1to1-nat.toml")
    assert [s.label() for s in iroh.steps] == [
        "gen-certs relay-cert @relay", "gen-file relay-config", "spawn relay @relay", "spawn provider @provider",
        "spawn fetcher @fetcher", "wait-for fetcher", "assert"]
    config = iroh.steps[1].content
    assert config == ('cert_path = "${relay-cert.cert_pem_path}"\nkey_path = "${relay-cert.key_pem_path}"\n')
    provider, fetcher = iroh.steps[3], iroh.steps[4]
    assert provider.requires == ["relay.ready"]
    assert provider.cmd == ["${binary.transfer}", "--output", "json", "provide", "--relay-url",
                            "https://$NETSIM_IP_relay:3340"]
    assert fetcher.cmd[4] == "${provider.endpoint_id}"
    assert fetcher.results is not None and fetcher.results.keys() == {"duration": "fetcher.duration",
                                                                      "down_bytes": "fetcher.size"}
    assert iroh.steps[5].timeout == 45.0
    assert set(iroh.binaries) == {"relay", "transfer"}
    assert iroh.binaries["relay"].mode == "fetch" and iroh.binaries["transfer"].mode == "build"


def test_extends_search_order_and_sim_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tpl = """
        [[step-template]]
        name = "hello"
        action = "run"
        cmd = ["echo", "{where}"]
        [[binary]]
        name = "tool"
        path = "{where}"
    """
    steps = """
        [[extends]]
        file = "shared.toml"
        [[step]]
        use = "hello"
        device = "a"
        args = ["${binary.tool}"]
    """
    sim_dir = tmp_path / "proj" / "sims"
    write(tmp_path, {"cwd/shared.toml": tpl.format(where="cwd")})
    monkeypatch.chdir(tmp_path / "cwd")
    text = sim_text(steps)
    # Only in the working directory.
    sim = load_one(sim_dir, text)
    assert sim.steps[0].cmd == ["echo", "cwd", "${binary.tool}"] and sim.binaries["tool"].path == "cwd"
    # One directory up wins over the working directory...
    write(tmp_path, {"proj/shared.toml": tpl.format(where="up")})
    assert load_one(sim_dir, text).steps[0].cmd[1] == "up"
    # ... and next to the sim file over both.
    write(sim_dir, {"shared.toml": tpl.format(where="here")})
    assert load_one(sim_dir, text).steps[0].cmd[1] == "here"
    # The sim file's own definitions win on name collision.
    own = text + '\n[[step-template]]\nname = "hello"\naction = "run"\ncmd = ["echo", "own"]\n'
    assert load_one(sim_dir, own).steps[0].cmd[1] == "own"


def test_several_extends_first_wins_and_nested(tmp_path: Path) -> None:
    write(tmp_path, {
        "one.toml": '[[extends]]\nfile = "base.toml"\n[[step-template]]\nname = "t"\ncmd = ["echo", "one"]\n',
        "two.toml": '[[step-template]]\nname = "t"\ncmd = ["echo", "two"]\n'
                    '[[step-template]]\nname = "u"\ncmd = ["echo", "u"]\n',
        "base.toml": '[[step-template]]\nname = "b"\ncmd = ["echo", "base"]\n',
    })
    steps = """
        [[extends]]
        file = "one.toml"
        [[extends]]
        file = "two.toml"
        [[step]]
        use = "t"
        device = "a"
        [[step]]
        use = "u"
        device = "a"
        [[step]]
        use = "b"
        device = "a"
    """
    sim = load_one(tmp_path, sim_text(steps))
    assert [s.cmd[1] for s in sim.steps] == ["one", "u", "base"]


def test_extends_can_name_the_topology(tmp_path: Path) -> None:
    write(tmp_path, {"defaults.toml": '[sim]\ntopology = "pair"\n',
                     "topos/pair.toml": TWO_HOSTS})
    sim = load_one(tmp_path, '[[extends]]\nfile = "defaults.toml"\n[sim]\nname = "x"\n'
                             '[[step]]\ncmd = ["true"]\ndevice = "b"\n')
    assert sim.topology_ref == "pair" and [d.name for d in sim.topology.devices] == ["a", "b"]
    assert sim.steps[0].action == "run"  # the default action when cmd is given


def test_topology_files_next_to_the_sim_then_one_up_then_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    one = '[[router]]\nname = "r"\n[device.{d}.eth0]\ngateway = "r"\n'
    monkeypatch.chdir(tmp_path)
    write(tmp_path, {"topos/t.toml": one.format(d="cwd")})
    text = '[sim]\nname = "x"\ntopology = "t"\n'
    sim_dir = tmp_path / "a" / "sims"
    assert load_one(sim_dir, text).topology.devices[0].name == "cwd"
    write(tmp_path, {"a/topos/t.toml": one.format(d="up")})
    assert load_one(sim_dir, text).topology.devices[0].name == "up"
    write(tmp_path, {"a/sims/topos/t.toml": one.format(d="here")})
    sim = load_one(sim_dir, text)
    assert sim.topology.devices[0].name == "here"
    assert sim.topology_file == (sim_dir / "topos" / "t.toml").resolve()


def test_matrix_product_params_and_when(tmp_path: Path) -> None:
    text = """
        [matrix]
        topo = ["1to1", "1to3"]
        cond = ["baseline", "impaired"]
        [matrix.params.cond]
        baseline = { latency = "0", rate = "0", impaired = "false" }
        impaired = { latency = "200", rate = "4000", impaired = "true" }

        [sim]
        name = "iroh-${matrix.topo}-${matrix.cond}"

        [[router]]
        name = "dc"
        [device.fetcher.eth0]
        gateway = "dc"

        [[step]]
        when = "${matrix.impaired}"
        action = "set-link-condition"
        device = "fetcher"
        condition = { latency_ms = "${matrix.latency}", rate_kbit = "${matrix.rate}" }

        [[step]]
        action = "run"
        device = "fetcher"
        cmd = ["echo", "${matrix.topo}", "${matrix.cond}", "${matrix.latency}"]
    """
    sims = load(tmp_path, text)
    assert [s.name for s in sims] == ["iroh-1to1-baseline", "iroh-1to1-impaired", "iroh-1to3-baseline",
                                      "iroh-1to3-impaired"]
    base, impaired = sims[0], sims[1]
    assert base.variant == {"topo": "1to1", "cond": "baseline", "latency": "0", "rate": "0", "impaired": "false"}
    assert base.steps[0].skip and not impaired.steps[0].skip
    assert impaired.steps[0].condition == pb.LinkCondition.manual(pb.LinkLimits(latency_ms=200, rate_kbit=4000))
    assert impaired.steps[1].cmd == ["echo", "1to1", "impaired", "200"]
    assert sims[3].steps[1].cmd == ["echo", "1to3", "impaired", "200"]


def test_matrix_without_placeholder_in_the_name_tells_variants_apart(tmp_path: Path) -> None:
    text = '[matrix]\nn = ["1", "2"]\n' + sim_text('[[step]]\ncmd = ["echo", "${matrix.n}"]\ndevice = "a"\n')
    assert [s.name for s in load(tmp_path, text)] == ["t-1", "t-2"]


def test_matrix_reaches_extends_and_topology_files(tmp_path: Path) -> None:
    write(tmp_path, {
        "shared.toml": '[[step-template]]\nname = "t"\ncmd = ["echo", "${matrix.word}"]\n',
        "topos/edge.toml": '[[router]]\nname = "r"\nnat = "${matrix.nat}"\n[device.a.eth0]\ngateway = "r"\n',
    })
    text = """
        [[extends]]
        file = "shared.toml"
        [matrix]
        nat = ["home", "corporate"]
        [matrix.params.nat]
        home = { word = "h" }
        corporate = { word = "c" }
        [sim]
        name = "x-${matrix.nat}"
        topology = "edge"
        [[step]]
        use = "t"
        device = "a"
    """
    home, corp = load(tmp_path, text)
    assert home.steps[0].cmd == ["echo", "h"] and corp.steps[0].cmd == ["echo", "c"]
    assert home.topology.routers[0].nat == "home" and corp.topology.routers[0].nat == "corporate"


def test_template_merging(tmp_path: Path) -> None:
    text = sim_text("""
        [[step-template]]
        name = "fetch"
        action = "spawn"
        parser = "ndjson"
        cmd = ["tool", "fetch"]
        env = { A = "1", B = "2" }
        requires = ["srv.port"]
        [step-template.captures.size]
        match = { kind = "Done" }
        pick = ".size"
        [step-template.captures.time]
        regex = "took (\\\\d+)"
        [step-template.results]
        down_bytes = ".size"
        duration = ".time"

        [[step]]
        action = "spawn"
        id = "srv"
        device = "b"
        cmd = ["server"]
        [step.captures.port]
        regex = "port (\\\\d+)"

        [[step]]
        use = "fetch"
        id = "f"
        device = "a"
        args = ["${srv.port}", "--fast"]
        env = { B = "two", C = "3" }
        requires = ["srv.port"]
        timeout = "5s"
        [step.captures.time]
        regex = "elapsed (\\\\d+)"
        [step.results]
        duration = ".time"
    """)
    f = load_one(tmp_path, text).steps[1]
    assert f.id == "f" and f.device == "a" and f.action == "spawn" and f.parser == "ndjson"
    assert f.cmd == ["tool", "fetch", "${srv.port}", "--fast"]  # args appended
    assert f.env == {"A": "1", "B": "two", "C": "3"}  # merged, call site wins
    assert f.requires == ["srv.port", "srv.port"] and f.timeout == 5.0
    assert set(f.captures) == {"size", "time"} and f.captures["time"].regex.pattern == r"elapsed (\d+)"
    assert f.results is not None and f.results.keys() == {"duration": "f.time"}  # replaced; .x -> id.x


def test_group_two_stage_substitution_and_templates_inside(tmp_path: Path) -> None:
    text = sim_text("""
        [[step-template]]
        name = "serve"
        action = "spawn"
        cmd = ["server", "--config"]
        [step-template.captures.ready]
        regex = "ready"

        [[step-group]]
        name = "setup"
        [[step-group.step]]
        action = "gen-certs"
        id = "${group.device}-cert"
        device = "${group.device}"
        [[step-group.step]]
        action = "gen-file"
        id = "${group.device}-config"
        content = "cert_path = \\"${${group.device}-cert.cert_pem_path}\\""
        [[step-group.step]]
        use = "serve"
        id = "${group.device}"
        device = "${group.device}"
        args = ["${${group.device}-config.path}"]

        [[step]]
        use = "setup"
        vars = { device = "b" }
        [[step]]
        cmd = ["client"]
        device = "a"
        requires = ["b.ready"]
    """)
    steps = load_one(tmp_path, text).steps
    assert [s.label() for s in steps] == ["gen-certs b-cert @b", "gen-file b-config", "spawn b @b", "run @a"]
    assert steps[1].content == 'cert_path = "${b-cert.cert_pem_path}"'
    assert steps[2].cmd == ["server", "--config", "${b-config.path}"]
    assert [s.index for s in steps] == [0, 1, 2, 3]


def test_group_call_when_false_skips_the_whole_group(tmp_path: Path) -> None:
    text = sim_text("""
        [[step-group]]
        name = "g"
        [[step-group.step]]
        cmd = ["echo", "${group.word}"]
        device = "a"
        [[step-group.step]]
        action = "wait"
        duration = "1s"
        [[step]]
        use = "g"
        vars = { word = "x" }
        when = "false"
        [[step]]
        use = "g"
        vars = { word = "y" }
    """)
    steps = load_one(tmp_path, text).steps
    assert [s.skip for s in steps] == [True, True, False, False]
    assert steps[2].cmd == ["echo", "y"]


def test_counted_devices_expand_steps_and_references(tmp_path: Path) -> None:
    topo = """
        [[router]]
        name = "dc"
        [device.server.eth0]
        gateway = "dc"
        [device.provider]
        count = 2
        [device.provider.eth0]
        gateway = "dc"
        [device.fetcher]
        count = 3
        [device.fetcher.eth0]
        gateway = "dc"
    """
    steps = """
        [[step]]
        action = "spawn"
        id = "provider"
        device = "provider"
        cmd = ["serve", "$NETSIM_IP_provider"]
        [step.captures.endpoint_id]
        regex = "id (\\\\w+)"

        [[step]]
        action = "spawn"
        id = "fetcher"
        device = "fetcher"
        cmd = ["fetch", "${provider.endpoint_id}", "$NETSIM_IP_server"]
        requires = ["provider.endpoint_id"]
        [step.captures.size]
        regex = "size (\\\\d+)"
        [step.results]
        down_bytes = "fetcher.size"

        [[step]]
        action = "wait-for"
        id = "fetcher"

        [[step]]
        action = "run"
        device = "server"
        cmd = ["report"]
        requires = ["fetcher.size"]

        [[step]]
        action = "assert"
        checks = ["fetcher.size matches [0-9]+", "provider.endpoint_id != none"]
    """
    sim = load_one(tmp_path, sim_text(steps, topology=topo))
    labels = [s.label() for s in sim.steps]
    assert labels == ["spawn provider-0 @provider-0", "spawn provider-1 @provider-1",
                      "spawn fetcher-0 @fetcher-0", "spawn fetcher-1 @fetcher-1", "spawn fetcher-2 @fetcher-2",
                      "wait-for fetcher-0", "wait-for fetcher-1", "wait-for fetcher-2", "run @server", "assert"]
    assert sim.steps[0].cmd == ["serve", "$NETSIM_IP_PROVIDER_0"]
    # fetcher-i follows provider-(i mod 2).
    assert [s.cmd[1] for s in sim.steps[2:5]] == ["${provider-0.endpoint_id}", "${provider-1.endpoint_id}",
                                                  "${provider-0.endpoint_id}"]
    assert sim.steps[4].requires == ["provider-0.endpoint_id"] and sim.steps[4].cmd[2] == "$NETSIM_IP_server"
    assert sim.steps[3].results is not None and sim.steps[3].results.down_bytes == "fetcher-1.size"
    assert sim.steps[8].requires == ["fetcher-0.size", "fetcher-1.size", "fetcher-2.size"]
    assert [c.text for c in sim.steps[9].checks] == [
        "fetcher-0.size matches [0-9]+", "fetcher-1.size matches [0-9]+", "fetcher-2.size matches [0-9]+",
        "provider-0.endpoint_id != none", "provider-1.endpoint_id != none"]
    assert [s.index for s in sim.steps] == list(range(10))


def test_step_defaults_and_aliases(tmp_path: Path) -> None:
    steps = """
        [[step]]
        action = "set-impair"
        device = "a"
        impair = "wifi"
        [[step]]
        kind = "switch-route"
        device = "a"
        to = "eth0"
        [[step]]
        action = "set-link-condition"
        device = "a"
        direction = "both"
        [[step]]
        action = "gen-certs"
        id = "c"
        [[step]]
        action = "wait"
        duration = "2m"
        [[step]]
        action = "wait"
        duration = "500ms"
    """
    s = load_one(tmp_path, sim_text(steps)).steps
    assert s[0].action == "set-link-condition" and s[0].condition == pb.LinkCondition.WIFI and s[0].interface is None
    assert s[0].direction == "up"
    assert s[1].action == "set-default-route" and s[1].to == "eth0"
    assert s[2].condition is None and s[2].direction == "both"  # no condition: clear
    assert s[3].cn == "patchbay" and s[3].san == [] and s[3].device is None
    assert s[4].duration == 120.0 and s[5].duration == 0.5


def test_the_repository_sims_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    names = {s.name for f in sorted((REPO / "sims").glob("*.toml")) if f.name != "holepunch-defaults.toml"
             for s in load_sims(f)}
    assert {"iperf-public", "iperf-nat", "ping-latency", "holepunch-home", "holepunch-corporate",
            "nat-home-lan", "nat-cgnat-mobile-4g"} <= names
    assert len(names) == 2 + 1 + 3 + 9
