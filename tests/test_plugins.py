"""Presets come from plugins: the built-in one, and third-party ones from entry points."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import patchbay_core as pb
from patchbay_core import hookspecs
from patchbay_core.plugins import plugin_manager, presets


def test_every_hook_of_the_contract_is_specified() -> None:
    names = {name for name in dir(hookspecs) if name.startswith("patchbay_")}
    assert names == {
        "patchbay_nat_presets", "patchbay_firewall_presets", "patchbay_router_presets",
        "patchbay_link_presets", "patchbay_nat_rules", "patchbay_nat_shared_rules", "patchbay_nat6_rules",
        "patchbay_firewall_rules",
    }
    assert plugin_manager().hook.patchbay_nat_rules.spec.opts["firstresult"] is True


def test_builtin_presets() -> None:
    routers = presets("router")
    assert routers["public"].pool is pb.Pool.PUBLIC and routers["public"].ip_support is pb.IpSupport.DUAL_STACK
    assert routers["public-v4"].ip_support is pb.IpSupport.V4_ONLY
    links = presets("link")
    assert links["wifi-bad"] == pb.LinkLimits(latency_ms=40, jitter_ms=15, loss_pct=2.0, rate_kbit=20_000)
    assert links["challenging"].loss_correlation_pct == 50.0


def test_link_condition_parses_sim_spellings() -> None:
    assert pb.LinkCondition.parse("Mobile_4G") == pb.LinkCondition.MOBILE_4G
    manual = pb.LinkCondition.parse({"latency_ms": "100", "loss_pct": "0.5"})
    assert manual.limits == pb.LinkLimits(latency_ms=100, loss_pct=0.5)
    with pytest.raises(ValueError, match="unknown link condition field 'latency'"):
        pb.LinkCondition.parse({"latency": 5})


def test_a_third_party_plugin_is_found_through_its_entry_point(tmp_path: Path) -> None:
    # A tiny installed distribution: a module with a hookimpl and a `patchbay` entry point.
    (tmp_path / "my_presets.py").write_text(textwrap.dedent(
        """
        import patchbay_core as pb

        @pb.hookimpl
        def patchbay_router_presets():
            return {"lab-only": pb.RouterSpec(pool=pb.Pool.PRIVATE, ip_support=pb.IpSupport.V4_ONLY)}
        """
    ))
    dist = tmp_path / "my_presets-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-presets\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[patchbay]\nmine = my_presets\n")
    script = textwrap.dedent(
        """
        import sys, anyio
        sys.path.insert(0, sys.argv[1])
        import patchbay_core as pb
        from patchbay_core.plugins import presets

        async def main():
            async with pb.Lab() as lab:
                r = await lab.add_router("r").preset("lab-only").build()
                print("lab-only" in presets("router"), "home" in presets("router"), r.downstream_cidr)

        anyio.run(main)
        """
    )
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True True 10.0.1.0/24"
