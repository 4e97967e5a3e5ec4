"""Bad sim files: every mistake is a SimError that names the file, the line and the key (or the
step) and says what is expected. Checked before anything runs (no kernel here)."""

from __future__ import annotations

from pathlib import Path

import pytest

import patchbay_core as pb
from tests.sims.helpers import TWO_HOSTS, load, sim_text, write


def error_of(tmp_path: Path, text: str, **files: str) -> pb.SimError:
    with pytest.raises(pb.SimError) as info:
        load(tmp_path, text, **files)
    return info.value


def line_of(text: str, needle: str) -> int:
    """The 1-based line of the first line containing `needle` in the file as written."""
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError(f"{needle!r} not in the text")


def check(err: pb.SimError, text: str, needle: str, key: str | None, *words: str) -> None:
    assert err.file is not None and err.file.endswith("sim.toml"), err
    assert err.line == line_of(text, needle), err
    if key is not None:
        assert err.key == key, err  # type: ignore[attr-defined]
        assert f"{key}:" in str(err)
    for word in words:
        assert word in str(err), err


def test_toml_syntax_error(tmp_path: Path) -> None:
    text = '[sim]\nname = "x"\n\n[[step]]\naction = "run\n'
    err = error_of(tmp_path, text)
    assert err.line == 5 and "not valid TOML" in str(err) and str(err).startswith(err.file + ":5:")


def test_unknown_action(tmp_path: Path) -> None:
    text = sim_text('[[step]]\naction = "spwan"\nid = "s"\ndevice = "a"\ncmd = ["x"]\n')
    err = error_of(tmp_path, text)
    check(err, text, "spwan", "step[0].action", "unknown action 'spwan'", "did you mean 'spawn'", "wait-for")
    assert err.step == "s"


def test_unknown_device(tmp_path: Path) -> None:
    text = sim_text('[[step]]\ncmd = ["true"]\ndevice = "a"\n[[step]]\nid = "two"\ncmd = ["true"]\ndevice = "bb"\n')
    err = error_of(tmp_path, text)
    check(err, text, '"bb"', "step[1].device", "unknown device 'bb'", "did you mean 'b'", "a, b, dc")
    assert err.step == "two" and "(step two)" in str(err)


def test_unknown_key_with_suggestion(tmp_path: Path) -> None:
    text = sim_text('[[step]]\ncmd = ["true"]\ndevice = "a"\nreadyafter = "1s"\n')
    err = error_of(tmp_path, text)
    check(err, text, "readyafter", "step[0].readyafter", "unknown key 'readyafter' in a run step")
    text = sim_text('[[step]]\naction = "spawn"\nid = "s"\ndevice = "a"\ncmd = ["x"]\nreadyafter = "1s"\n')
    check(error_of(tmp_path, text), text, "readyafter", "step[0].readyafter", "did you mean 'ready_after'")


def test_missing_required_key(tmp_path: Path) -> None:
    text = sim_text('[[step]]\naction = "spawn"\ndevice = "a"\ncmd = ["x"]\n')
    check(error_of(tmp_path, text), text, "[[step]]", "step[0]", "a spawn step needs id")


@pytest.mark.parametrize("value", ['"3h"', '"10"', "5", '"fast"', '"-1s"'])
def test_bad_duration(tmp_path: Path, value: str) -> None:
    text = sim_text(f'[[step]]\naction = "wait"\nduration = {value}\n')
    err = error_of(tmp_path, text)
    check(err, text, "duration", "step[0].duration", 'expected a duration such as "500ms", "30s" or "2m"')
    if value == '"3h"':
        assert "'3h'" in str(err) and "units: ms, s, m" in str(err)


def test_matrix_key_never_defined(tmp_path: Path) -> None:
    text = '[matrix]\ntopo = ["a", "b"]\n' + sim_text('[[step]]\ncmd = ["echo", "${matrix.cond}"]\ndevice = "a"\n')
    check(error_of(tmp_path, text), text, "matrix.cond", "step[0].cmd[1]", "${matrix.cond} is not defined",
          "axes and params: topo")
    text = sim_text('[[step]]\ncmd = ["echo", "${matrix.cond}"]\ndevice = "a"\n')
    check(error_of(tmp_path, text), text, "matrix.cond", "step[0].cmd[1]", "the file has no [matrix] table")


def test_matrix_params_of_an_unknown_value(tmp_path: Path) -> None:
    text = '[matrix]\ncond = ["base", "bad"]\n[matrix.params.cond]\nbsae = { x = "1" }\n' + sim_text("")
    check(error_of(tmp_path, text), text, "bsae", "matrix.params.cond.bsae", "'bsae' is not a value of axis 'cond'")


def test_group_nesting_a_group(tmp_path: Path) -> None:
    text = sim_text("""
        [[step-group]]
        name = "inner"
        [[step-group.step]]
        action = "wait"
        duration = "1s"
        [[step-group]]
        name = "outer"
        [[step-group.step]]
        use = "inner"
        [[step]]
        use = "outer"
    """)
    check(error_of(tmp_path, text), text, 'use = "inner"', "step-group[1].step[0].use",
          "step group 'outer' uses step group 'inner': groups cannot nest other groups")


def test_group_variable_not_given(tmp_path: Path) -> None:
    text = sim_text("""
        [[step-group]]
        name = "g"
        [[step-group.step]]
        cmd = ["echo", "${group.word}"]
        device = "a"
        [[step]]
        use = "g"
        vars = { other = "x" }
    """)
    err = error_of(tmp_path, text)
    check(err, text, "group.word", "step-group[0].step[0].cmd[1]", "${group.word}", "gives no 'word' in vars",
          f"sim.toml:{line_of(text, '[[step]]')}")


def test_group_call_takes_only_vars(tmp_path: Path) -> None:
    text = sim_text('[[step-group]]\nname = "g"\n[[step-group.step]]\naction = "wait"\nduration = "1s"\n'
                    '[[step]]\nuse = "g"\ndevice = "a"\n')
    check(error_of(tmp_path, text), text, 'device = "a"', "step[0].device", "takes only vars")


def test_unknown_template(tmp_path: Path) -> None:
    text = sim_text('[[step-template]]\nname = "fetch"\ncmd = ["x"]\n[[step]]\nuse = "fetsh"\ndevice = "a"\n')
    check(error_of(tmp_path, text), text, "fetsh", "step[0].use", "no [[step-template]] or [[step-group]] named "
          "'fetsh'", "did you mean 'fetch'")


def test_capture_never_defined(tmp_path: Path) -> None:
    text = sim_text('[[step]]\naction = "spawn"\nid = "srv"\ndevice = "a"\ncmd = ["x"]\n'
                    '[step.captures.port]\nregex = "(\\\\d+)"\n'
                    '[[step]]\ncmd = ["c", "${srv.prot}"]\ndevice = "b"\n')
    check(error_of(tmp_path, text), text, "srv.prot", "step[1].cmd", "step 'srv' has no capture 'prot'",
          "did you mean 'port'")
    text = sim_text('[[step]]\ncmd = ["c"]\ndevice = "b"\nrequires = ["svr.port"]\n')
    check(error_of(tmp_path, text), text, "requires", "step[0].requires", "no step has id 'svr'",
          "capture 'svr.port' is never produced")


def test_capture_of_a_later_step(tmp_path: Path) -> None:
    text = sim_text('[[step]]\ncmd = ["c", "${srv.port}"]\ndevice = "b"\n'
                    '[[step]]\naction = "spawn"\nid = "srv"\ndevice = "a"\ncmd = ["x"]\n'
                    '[step.captures.port]\nregex = "(\\\\d+)"\n')
    check(error_of(tmp_path, text), text, "srv.port", "step[0].cmd", "step 'srv' comes after this one")


def test_assert_expressions(tmp_path: Path) -> None:
    base = '[[step]]\nid = "p"\ncmd = ["x"]\ndevice = "a"\n[step.captures.v]\nregex = "(.*)"\n'
    text = sim_text(base + '[[step]]\naction = "assert"\nchecks = ["p.v equals 3"]\n')
    check(error_of(tmp_path, text), text, "equals", "step[1].checks[0]", "cannot read assertion 'p.v equals 3'")
    text = sim_text(base + '[[step]]\naction = "assert"\ncheck = "p.v >= fast"\n')
    check(error_of(tmp_path, text), text, "fast", "step[1].check", "'fast' is not a number")
    text = sim_text(base + '[[step]]\naction = "assert"\ncheck = "p.v matches ([0-9]"\n')
    check(error_of(tmp_path, text), text, "matches", "step[1].check", "not a valid regular expression")
    text = sim_text(base + '[[step]]\naction = "assert"\ncheck = "p.w == 3"\n')
    check(error_of(tmp_path, text), text, "p.w", "step[1].check", "step 'p' has no capture 'w'")


def test_undeclared_binary(tmp_path: Path) -> None:
    text = sim_text('[[binary]]\nname = "relay"\npath = "/bin/true"\n'
                    '[[step]]\ncmd = ["${binary.rleay}"]\ndevice = "a"\n')
    check(error_of(tmp_path, text), text, "rleay", "step[0].cmd", "unknown binary ${binary.rleay}",
          "did you mean 'relay'")


@pytest.mark.parametrize(("binary", "needle", "key", "words"), [
    ('name = "x"\n', "[[binary]]", "binary[0]", "needs a source"),
    ('name = "x"\npath = "a"\nurl = "http://127.0.0.1/x"\n', "url", "binary[0].url", "give exactly one source"),
    ('name = "x"\nrepo = "r.git"\n', "repo", "binary[0].repo", "repo must pair with example or bin"),
    ('name = "x"\nmode = "target"\n', "[[binary]]", "binary[0]", "name the artifact with example or bin"),
    ('name = "x"\nmode = "download"\nurl = "u"\n', "download", "binary[0].mode", "unknown mode 'download'"),
    ('name = "x"\npaht = "a"\n', "paht", "binary[0].paht", "did you mean 'path'"),
])
def test_bad_binary_tables(tmp_path: Path, binary: str, needle: str, key: str, words: str) -> None:
    text = sim_text(f"[[binary]]\n{binary}[[step]]\ncmd = [\"${{binary.x}}\"]\ndevice = \"a\"\n")
    check(error_of(tmp_path, text), text, needle, key, words)


def test_netsim_variable_of_an_unknown_device(tmp_path: Path) -> None:
    text = sim_text('[[step]]\ncmd = ["ping", "$NETSIM_IP_c"]\ndevice = "a"\n')
    check(error_of(tmp_path, text), text, "NETSIM_IP_c", "step[0].cmd", "no device or router named like 'c'")


def test_unclosed_interpolation(tmp_path: Path) -> None:
    text = sim_text('[[step]]\ncmd = ["echo", "${oops"]\ndevice = "a"\n')
    check(error_of(tmp_path, text), text, "oops", "step[0].cmd", "unclosed '${'")


def test_capture_spec_mistakes(tmp_path: Path) -> None:
    text = sim_text('[[step]]\ncmd = ["x"]\nid = "s"\ndevice = "a"\n[step.captures.v]\npick = ".v"\n')
    check(error_of(tmp_path, text), text, "pick", "step[0].captures.v.pick", 'set parser = "ndjson"')
    text = sim_text('[[step]]\ncmd = ["x"]\nid = "s"\ndevice = "a"\nparser = "json"\n[step.captures.v]\n'
                    'match = { kind = "x" }\n')
    check(error_of(tmp_path, text), text, "match", "step[0].captures.v.match", "match needs pick")
    text = sim_text('[[step]]\ncmd = ["x"]\nid = "s"\ndevice = "a"\n[step.captures.v]\npipe = "stdin"\n'
                    'regex = "x"\n')
    check(error_of(tmp_path, text), text, "stdin", "step[0].captures.v.pipe", '"stdout" or "stderr"')
    text = sim_text('[[step]]\ncmd = ["x"]\nid = "s"\ndevice = "a"\nparser = "yaml"\n')
    check(error_of(tmp_path, text), text, "yaml", "step[0].parser", "unknown parser 'yaml'")


def test_results_shorthand_needs_an_id(tmp_path: Path) -> None:
    text = sim_text('[[step]]\ncmd = ["x"]\ndevice = "a"\n[step.captures.v]\nregex = "x"\n'
                    '[step.results]\nlatency_ms = ".v"\n')
    check(error_of(tmp_path, text), text, "latency_ms", "step[0].results.latency_ms", "the step has no id")


def test_wait_for_an_unknown_spawn(tmp_path: Path) -> None:
    text = sim_text('[[step]]\naction = "spawn"\nid = "server"\ndevice = "a"\ncmd = ["x"]\n'
                    '[[step]]\naction = "wait-for"\nid = "sever"\n')
    check(error_of(tmp_path, text), text, '"sever"', "step[1].id", "no earlier spawn step has that id",
          "did you mean 'server'")


def test_set_link_condition_mistakes(tmp_path: Path) -> None:
    text = sim_text('[[step]]\naction = "set-link-condition"\ndevice = "a"\ncondition = "wify"\n')
    check(error_of(tmp_path, text), text, "wify", "step[0].condition", "unknown link preset 'wify'")
    text = sim_text('[[step]]\naction = "set-link-condition"\ndevice = "a"\ncondition = { latency = 3 }\n')
    check(error_of(tmp_path, text), text, "latency", "step[0].condition", "unknown link condition field 'latency'")
    text = sim_text('[[step]]\naction = "link-down"\ndevice = "a"\ninterface = "eth1"\n')
    check(error_of(tmp_path, text), text, "eth1", "step[0].interface", "device 'a' has no interface 'eth1'")
    text = sim_text('[[step]]\naction = "link-down"\ndevice = "dc"\n')
    check(error_of(tmp_path, text), text, 'device = "dc"', "step[0].device", "'dc' is a router")


def test_topology_mistakes_are_sim_errors_wrapping_topology_errors(tmp_path: Path) -> None:
    text = sim_text("", topology='[[router]]\nname = "dc"\n[device.a.eth0]\ngateway = "dcc"\n')
    err = error_of(tmp_path, text)
    check(err, text, '"dcc"', "device.a.eth0.gateway", "unknown router 'dcc'", "did you mean 'dc'")
    assert isinstance(err.__cause__, pb.TopologyError) and err.__cause__.line == err.line
    # In a topology file, the error names that file.
    write(tmp_path, {"topos/t.toml": '[[router]]\nname = "r"\nnat = "homey"\n'})
    err = error_of(tmp_path, '[sim]\nname = "x"\ntopology = "t"\n')
    assert err.file is not None and err.file.endswith("topos/t.toml") and err.line == 3
    assert "unknown nat preset 'homey'" in str(err) and isinstance(err.__cause__, pb.TopologyError)


def test_topology_missing_or_given_twice(tmp_path: Path) -> None:
    text = '[sim]\nname = "x"\ntopology = "nowhere"\n'
    check(error_of(tmp_path, text), text, "nowhere", "sim.topology", "topology 'nowhere' not found",
          "topos/nowhere.toml")
    text = '[sim]\nname = "x"\n[[step]]\naction = "wait"\nduration = "1s"\n'
    check(error_of(tmp_path, text), text, "[sim]", "sim", "the sim has no topology")
    write(tmp_path, {"topos/t.toml": TWO_HOSTS})
    text = '[sim]\nname = "x"\ntopology = "t"\n' + TWO_HOSTS
    check(error_of(tmp_path, text), text, "[[router]]", "router", "also has inline [router] tables")


def test_extends_mistakes(tmp_path: Path) -> None:
    text = '[[extends]]\nfile = "gone.toml"\n' + sim_text("")
    check(error_of(tmp_path, text), text, "gone.toml", "extends[0].file", "extends file 'gone.toml' not found")
    write(tmp_path, {"a.toml": '[[extends]]\nfile = "b.toml"\n', "b.toml": '[[extends]]\nfile = "a.toml"\n'})
    text = '[[extends]]\nfile = "a.toml"\n' + sim_text("")
    err = error_of(tmp_path, text)
    assert "extends files form a cycle" in str(err) and err.file.endswith("b.toml")
    write(tmp_path, {"c.toml": '[[step]]\naction = "wait"\nduration = "1s"\n'})
    err = error_of(tmp_path, '[[extends]]\nfile = "c.toml"\n' + sim_text(""))
    assert err.file.endswith("c.toml") and err.line == 1 and "belongs in the sim file" in str(err)


def test_top_level_and_sim_table_keys(tmp_path: Path) -> None:
    text = sim_text('[[steps]]\naction = "wait"\nduration = "1s"\n')
    check(error_of(tmp_path, text), text, "[[steps]]", "steps", "unknown top-level key 'steps'",
          "did you mean 'step'")
    text = '[sim]\nname = "x"\ntopolgy = "t"\n'
    check(error_of(tmp_path, text), text, "topolgy", "sim.topolgy", "did you mean 'topology'")


def test_duplicate_spawn_ids(tmp_path: Path) -> None:
    text = sim_text('[[step]]\naction = "spawn"\nid = "s"\ndevice = "a"\ncmd = ["x"]\n'
                    '[[step]]\naction = "spawn"\nid = "s"\ndevice = "b"\ncmd = ["y"]\n')
    err = error_of(tmp_path, text)
    assert err.key == "step[1].id" and "already running" in str(err)  # type: ignore[attr-defined]


def test_template_errors_point_into_the_template(tmp_path: Path) -> None:
    write(tmp_path, {"shared.toml": '[[step-template]]\nname = "t"\naction = "run"\ncmd = ["x"]\nprser = "json"\n'})
    err = error_of(tmp_path, '[[extends]]\nfile = "shared.toml"\n' + sim_text('[[step]]\nuse = "t"\ndevice = "a"\n'))
    assert err.file is not None and err.file.endswith("shared.toml") and err.line == 5
    assert err.key == "step-template[0].prser" and "from template 't'" in str(err)  # type: ignore[attr-defined]
