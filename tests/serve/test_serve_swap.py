"""Hot swap in-process (procmem.llm.PolicyHost, which serve and chat sessions share): follow promote and rollback
(back to the base model too); a pinned version stays."""

from __future__ import annotations

from pathlib import Path

from serve_helpers import register_adapters

from procmem.core import Home
from procmem.llm import PolicyHost


def test_the_host_follows_promote_and_rollback_and_a_pin_stays(tmp_path: Path) -> None:
    from procmem.core.registry import promote, rollback

    home_dir = tmp_path / "home"
    register_adapters(home_dir, 2)
    home = Home(home_dir)
    host = PolicyHost.open(home, model="local:tiny", adapter="promoted")
    pinned = PolicyHost.open(home, model="local:tiny", adapter="v1")
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


def test_on_llama_cpp_a_swap_reuses_the_engine_and_each_backend_keeps_its_adapter(tmp_path: Path,
                                                                                 tiny_gguf: Path) -> None:
    """A GGUF model runs on one llama.cpp engine for the server's life: a promotion swaps the adapter onto it
    (no reload), and a request still holding the old backend is answered, and labelled, by the old adapter."""
    from procmem.core import GenerationConfig
    from procmem.core.registry import promote
    from procmem.llm.llamacpp import LlamaCppLLM, PinnedAdapter

    home_dir = tmp_path / "home"
    register_adapters(home_dir, 1)
    home = Home(home_dir)
    host = PolicyHost.open(home, model=f"local:{tiny_gguf}", adapter="promoted")
    greedy = GenerationConfig(max_tokens=4, temperature=0.0)
    try:
        engine, before = host._engine, host.current
        assert isinstance(engine, LlamaCppLLM) and before.adapter_version is None
        model = engine._model
        promote(home.adapters, "v1")
        assert host.refresh() and host.current.adapter_version == "v1"
        assert host._engine is engine and engine._model is model, "the base model stayed loaded"
        old, new = before, host.current
        assert isinstance(old.llm, PinnedAdapter) and isinstance(new.llm, PinnedAdapter)
        assert (old.llm.adapter_version, new.llm.adapter_version) == (None, "v1")
        assert engine.adapter_version == "v1", "new requests on the engine get the promoted adapter"
        # the context applies the adapter of the request it admits: each backend's request ran on its own
        assert old.generate(["Hello"], greedy)[0].completion_tokens > 0 and engine._ctx_adapter is None
        assert new.generate(["Hello"], greedy)[0].completion_tokens > 0
        assert engine._ctx_adapter is not None and engine._ctx_adapter.version == "v1"
    finally:
        host.close()
    assert engine._closing, "closing the host closes its engine"


def test_choose_policy_is_the_one_rule_for_which_adapter_a_home_serves(tmp_path: Path) -> None:
    """none | promoted | vN | a directory, for local models; a remote model takes none (promoted quietly means the
    bare model, an explicit version is a located error); ``version`` relabels a candidate before registration."""
    import pytest

    from procmem.core import ProcmemError
    from procmem.core.registry import promote
    from procmem.llm import choose_policy

    home_dir = tmp_path / "home"
    register_adapters(home_dir, 2)
    home = Home(home_dir)
    assert choose_policy(home, model="local:tiny", adapter="promoted").version is None  # nothing promoted yet
    promote(home.adapters, "v1")
    promote(home.adapters, "v2")
    promoted = choose_policy(home, model="local:tiny", adapter="promoted")
    assert (promoted.version, promoted.adapter_dir) == ("v2", home.adapters / "v2")
    assert choose_policy(home, model="local:tiny", adapter="v1").version == "v1"
    assert choose_policy(home, model="local:tiny", adapter="none").adapter_dir is None
    candidate = choose_policy(home, model="local:tiny", adapter=str(home.adapters / "v1"), version="candidate")
    assert (candidate.version, candidate.adapter_dir) == ("candidate", home.adapters / "v1")
    assert choose_policy(home, model="litellm:openai/x", adapter="promoted").adapter_dir is None
    with pytest.raises(ProcmemError, match="needs a local model"):
        choose_policy(home, model="litellm:openai/x", adapter="v1")
    with pytest.raises(ProcmemError, match=r"v9 does not exist.*known versions: v1, v2"):
        choose_policy(home, model="local:tiny", adapter="v9")
