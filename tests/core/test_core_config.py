from __future__ import annotations

from pathlib import Path

import pytest

from procmem.agent.config import SolveConfig
from procmem.core import GenerationConfig, Home, ProcmemError, load_config


def test_config_loads_from_toml_and_overrides_win(tmp_path: Path) -> None:
    path = tmp_path / "solve.toml"
    path.write_text('suite = "builtin:arith"\nn = 5\n[generation]\nmax_tokens = 7\n')
    config = load_config(SolveConfig, path, n=3, model=None)
    assert (config.suite, config.n, config.session.generation.max_tokens) == ("builtin:arith", 3, 7)


def test_bad_value_names_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "solve.toml"
    path.write_text('suite = "x"\n\nattempts = 0\n')
    with pytest.raises(ProcmemError) as err:
        load_config(SolveConfig, path)
    assert f"{path}:3" in str(err.value) and "attempts" in str(err.value)


def test_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('suite = "x"\nn = = 3\n')
    with pytest.raises(ProcmemError, match=r"bad\.toml:2"):
        load_config(SolveConfig, path)


def test_unknown_key_is_rejected_with_the_valid_ones(tmp_path: Path) -> None:
    path = tmp_path / "solve.toml"
    path.write_text('suite = "x"\nattemps = 3\n')
    with pytest.raises(ProcmemError, match="attemps") as err:
        load_config(SolveConfig, path)
    assert "solve.toml:2" in str(err.value)


def test_home_refuses_a_foreign_directory_and_a_file(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.txt").write_text("not ours")
    with pytest.raises(ProcmemError, match="not a procmem home"):
        Home(foreign).ensure()
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(ProcmemError, match="not a directory"):
        Home(afile).ensure()


def test_home_layout_is_created_and_reopened(tmp_path: Path) -> None:
    home = Home(tmp_path / "h").ensure()
    assert home.chroma.is_dir() and home.models.is_dir()
    Home(tmp_path / "h").ensure()  # reopening an existing home is fine


def test_home_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROCMEM_HOME", str(tmp_path / "env"))
    assert Home.resolve().root == tmp_path / "env"
    assert Home.resolve(tmp_path / "opt").root == tmp_path / "opt"


def test_each_prompt_of_a_seeded_sampling_call_gets_its_own_seed() -> None:
    sampled = GenerationConfig(temperature=0.8, seed=10)
    assert [sampled.for_prompt(i).seed for i in range(3)] == [10, 11, 12]
    assert sampled.for_prompt(2).model_copy(update={"seed": 10}) == sampled, "only the seed changes"
    greedy, unseeded = GenerationConfig(seed=10), GenerationConfig(temperature=0.8)
    assert greedy.for_prompt(3) is greedy and unseeded.for_prompt(3) is unseeded
