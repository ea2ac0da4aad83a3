"""The generated CLI and configuration reference: complete, and every entry has help text."""

from __future__ import annotations

from types import ModuleType
from typing import Annotated

import typer
from pydantic import Field

from procmem.core.config import Config

# Configs the reference must list, by class name only: they may move between modules.
_KNOWN_CONFIGS = {"SolveConfig", "GenerationConfig", "DistillConfig", "MemoryConfig", "EvalConfig"}


def test_every_command_and_option_has_help(reference: ModuleType) -> None:
    missing = reference.undocumented_cli()
    assert not missing, f"commands or options without help text (add help=... to them): {missing}"


def test_every_config_field_has_a_description(reference: ModuleType) -> None:
    missing = reference.undocumented_config()
    assert not missing, f"configs without a docstring or fields without Field(description=...): {missing}"


def test_the_checks_catch_what_has_no_help(reference: ModuleType) -> None:
    app = typer.Typer(help="A root with help.")

    @app.command()
    def documented(n: Annotated[int, typer.Option(help="How many.")] = 1) -> None:
        """Has help."""

    @app.command()
    def bare(n: Annotated[int, typer.Option()] = 1) -> None:
        pass

    assert reference.undocumented_cli(app) == ["procmem bare", "procmem bare --n"]

    class Bare(Config):
        described: int = Field(default=1, description="Has one.")
        undescribed: int = 2

    assert reference.undocumented_config([Bare]) == ["Bare", "Bare.undescribed"]


def test_config_discovery_finds_every_config(reference: ModuleType) -> None:
    found = {cls.__name__ for cls in reference.config_classes()}
    assert found >= _KNOWN_CONFIGS, f"not discovered: {_KNOWN_CONFIGS - found}"
    top = {cls.__name__ for cls in reference.top_level_configs()}
    assert top >= {"SolveConfig", "EvalConfig"}
    assert "MemoryConfig" in found and "MemoryConfig" not in top, "a section of EvalConfig ([memory])"


def test_config_discovery_is_not_a_fixed_list(reference: ModuleType) -> None:
    class BrandNewConfig(Config):
        """Defined after the package was imported, as if in one of its modules."""

        knob: int = Field(default=1, description="A knob.")

    class TestOnlyConfig(Config):
        knob: int = 1

    BrandNewConfig.__module__ = "procmem.core.config"
    found = reference.config_classes()
    assert BrandNewConfig in found and TestOnlyConfig not in found, "only classes of procmem's own modules"


def test_discovery_imports_every_installed_module(reference: ModuleType) -> None:
    modules = set(reference.procmem_modules())
    for name in ("procmem.core.config", "procmem.agent", "procmem.memory.config", "procmem.distill.config",
                 "procmem.eval.config", "procmem.verifiers.code", "procmem.cli.app"):
        assert name in modules


def test_cli_reference_lists_every_command_and_option(reference: ModuleType) -> None:
    page = reference.cli_markdown()
    for entry in reference.cli_commands():
        assert f"`{entry.path}`" in page
        for param in reference.cli_params(entry.command):
            for name in param.opts if param.param_type_name == "option" else []:
                assert name in page, f"{entry.path} {name} missing from the CLI reference"
    assert "`procmem memory reflect`" in page and "--max-calls" in page


def test_config_reference_lists_every_field_with_its_description(reference: ModuleType) -> None:
    page = reference.config_markdown()
    for cls in reference.config_classes():
        assert f"## {cls.__name__}\n" in page
        for name, field in cls.model_fields.items():
            assert f"`{name}`" in page or f"`[{name}]`" in page, f"{cls.__name__}.{name} missing"
            assert reference._cell(field.description) in page, f"{cls.__name__}.{name}: description missing"


def test_the_python_api_covers_every_installed_package(reference: ModuleType) -> None:
    documented = set(reference.api_packages())
    installed = {p for p in reference.procmem_packages() if p.count(".") == 1} - {"procmem.cli"}
    assert documented == installed
    assert reference.api_packages()[:2] == ["procmem.core", "procmem.llm"]  # lowest layer first
