"""Hot swap in-process: follow promote and rollback (back to the base model too); a pinned version stays."""

from __future__ import annotations

from pathlib import Path

from serve_helpers import register_adapters

from procmem.core import Home
from procmem.serve import ServeConfig
from procmem.serve.wiring import ModelHost


def test_the_host_follows_promote_and_rollback_and_a_pin_stays(tmp_path: Path) -> None:
    from procmem.distill import promote, rollback

    home_dir = tmp_path / "home"
    register_adapters(home_dir, 2)
    home = Home(home_dir)
    host = ModelHost(ServeConfig(model="local:tiny", adapter="promoted"), home)
    pinned = ModelHost(ServeConfig(model="local:tiny", adapter="v1"), home)
    try:
        assert host.current.adapter_version is None and not host.refresh()
        promote(home.adapters, "v1")
        before = host.current
        assert host.refresh() and host.current.adapter_version == "v1"
        assert before.adapter_version is None  # a request holding the old backend keeps its version
        promote(home.adapters, "v2")
        assert host.refresh() and host.current.adapter_version == "v2"
        rollback(home.adapters)
        rollback(home.adapters)
        assert host.refresh() and host.current.adapter_version is None and host.swaps == 3
        promote(home.adapters, "v1")
        assert not pinned.refresh() and pinned.current.adapter_version == "v1"
    finally:
        host.close()
        pinned.close()
