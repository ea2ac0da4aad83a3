"""The generated reference pages: the CLI from the Typer app, the configuration from the pydantic configs.

Both are rendered from the code at build time (``gen_pages.py``), so they cannot drift from it, and the tests in
``tests/docs/`` use the same discovery to fail when a command, an option or a config field has no help text.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
"""The repository root (this file is docs/_gen/reference.py)."""

__all__ = [
    "CliCommand",
    "api_packages",
    "cli_commands",
    "cli_markdown",
    "config_classes",
    "config_markdown",
    "procmem_modules",
    "procmem_packages",
    "source_tree",
    "top_level_configs",
    "undocumented_cli",
    "undocumented_config",
]


# --- CLI ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CliCommand:
    """One command of the ``procmem`` tree: its full path (``procmem memory stats``) and its click object."""

    path: str
    command: Any  # a click.Command (typer's vendored click)


def cli_commands(app: Any = None) -> list[CliCommand]:
    """Every command and group of a Typer app (default: the ``procmem`` app), depth first, in the order
    ``--help`` lists them."""
    import typer.main

    if app is None:
        from procmem.cli import app
    return list(_walk(typer.main.get_command(app), "procmem"))


def undocumented_cli(app: Any = None) -> list[str]:
    """Every command without help text, and every argument or option without help, e.g.
    ``procmem memory ls --limit``: what the CLI reference would show with an empty description."""
    missing = []
    for entry in cli_commands(app):
        if not (entry.command.help or "").strip():
            missing.append(entry.path)
        for param in cli_params(entry.command):
            if not (getattr(param, "help", None) or "").strip():
                name = param.opts[0] if param.param_type_name == "option" else param.name.upper()
                missing.append(f"{entry.path} {name}")
    return missing


def _walk(command: Any, path: str) -> Iterator[CliCommand]:
    yield CliCommand(path, command)
    subcommands = getattr(command, "commands", None)
    if subcommands:
        for name in command.list_commands(None):  # the listing order of --help
            if not getattr(subcommands[name], "hidden", False):
                yield from _walk(subcommands[name], f"{path} {name}")


def _cell(text: str) -> str:
    """One Markdown table cell: one line, reST's double backquotes made Markdown code, and pipes escaped
    outside code spans (inside them Python-Markdown's tables keep a pipe as it is, and would show the escape)."""
    parts = " ".join(text.split()).replace("``", "`").split("`")
    return "`".join(part if i % 2 else _prose(part).replace("|", "\\|") for i, part in enumerate(parts))


def _prose(text: str) -> str:
    """Help text as Markdown prose: ``<`` and ``>`` escaped, or ``litellm:<provider/model>`` would lose its
    placeholder to the HTML parser."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def cli_params(command: Any) -> list[Any]:
    """The documented parameters of ``command``: all but the automatic ``--help`` and hidden ones (testing aids
    that ``--help`` does not show either)."""
    return [p for p in command.params if p.name != "help" and not getattr(p, "hidden", False)]


def _context(command: Any, path: str) -> Any:
    # typer vendors its own click: make the context through the command, not through an imported click.
    return command.context_class(command, info_name=path)


def cli_markdown() -> str:
    """The CLI reference: for every command, its usage, help and a table of its arguments and options, each
    exactly as ``--help`` prints it (names, value type, help and default)."""
    out: list[str] = []
    for entry in cli_commands():
        cmd = entry.command
        depth = entry.path.count(" ")
        out.append(f"{'#' * min(2 + depth, 4)} `{entry.path}`\n")
        ctx = _context(cmd, entry.path)
        usage = " ".join(cmd.collect_usage_pieces(ctx))
        out.append(f"```text\n{entry.path} {usage}\n```\n")
        if cmd.help:
            out.append(_dedent_help(cmd.help) + "\n")
        params = cli_params(cmd)
        if params:
            out.append("| argument / option | help |\n|---|---|")
            for param in params:
                record = param.get_help_record(ctx)
                names, help_text = record if record else (param.name, param.help or "")
                if param.param_type_name == "argument" and not help_text:
                    help_text = param.help or ""
                out.append(f"| `{' '.join(names.split())}` | {_cell(help_text)} |")
            out.append("")
        subcommands = getattr(cmd, "commands", None)
        if subcommands:
            out.append("| command | what it does |\n|---|---|")
            for name in cmd.list_commands(ctx):
                sub = subcommands[name]
                if getattr(sub, "hidden", False):
                    continue
                anchor = _anchor(f"{entry.path} {name}")
                out.append(f"| [`{name}`](#{anchor}) | {_cell(sub.get_short_help_str(limit=200))} |")
            out.append("")
    return "\n".join(out)


def _dedent_help(text: str) -> str:
    import inspect

    # click's \b marks a paragraph that must not be rewrapped; Markdown needs no such mark.
    return _prose(inspect.cleandoc(text).replace("\b\n", ""))


def _anchor(title: str) -> str:
    """The id Python-Markdown's toc gives a heading `` `title` ``: lower case, spaces to dashes."""
    return "-".join(title.lower().split())


# --- configuration --------------------------------------------------------------------------------------------


def procmem_packages() -> list[str]:
    """The packages the project installs (``[tool.setuptools] packages`` in pyproject.toml). Read from there
    because in an editable install ``procmem.agent`` & co. live outside ``procmem/`` and a walk of
    ``procmem.__path__`` does not see them."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return list(data["tool"]["setuptools"]["packages"])


def procmem_modules() -> list[str]:
    """Every module of every installed procmem package, by import name."""
    names: list[str] = []
    for package in procmem_packages():
        module = importlib.import_module(package)
        names.append(package)
        # ``__main__`` modules run their program on import (``python -m procmem.cli``): never import them.
        names += [info.name for info in pkgutil.iter_modules(module.__path__, f"{package}.")
                  if not info.ispkg and not info.name.endswith(".__main__")]
    return sorted(set(names))


def config_classes() -> list[type]:
    """Every job config: each subclass of ``procmem.core.config.Config`` in any module of the installed
    ``procmem`` packages (all imported, so a new config class or a moved module cannot drop out), sorted by
    name."""
    from procmem.core.config import Config

    modules = set(procmem_modules())
    for name in modules:
        importlib.import_module(name)
    found: dict[str, type] = {}
    stack = list(Config.__subclasses__())
    while stack:
        cls = stack.pop()
        if cls.__module__ in modules:  # not a class a test defined (alive until the garbage collector runs)
            found[f"{cls.__module__}.{cls.__qualname__}"] = cls
        stack.extend(cls.__subclasses__())
    return sorted(found.values(), key=lambda c: c.__name__)


def undocumented_config(classes: list[type] | None = None) -> list[str]:
    """Every config class without a docstring and every field without a description, e.g.
    ``SolveConfig.n``: what the configuration reference would show with an empty description."""
    missing = []
    for cls in config_classes() if classes is None else classes:
        if not (cls.__doc__ or "").strip():
            missing.append(cls.__name__)
        for name, field in cls.model_fields.items():  # type: ignore[attr-defined]
            if not (field.description or "").strip():
                missing.append(f"{cls.__name__}.{name}")
    return missing


def _nested_config(annotation: Any) -> type | None:
    """The config class a field holds (directly or as ``X | None``), else None."""
    from procmem.core.config import Config

    if isinstance(annotation, type) and issubclass(annotation, Config):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            nested = _nested_config(arg)
            if nested is not None:
                return nested
    return None


def top_level_configs() -> list[type]:
    """The configs no other config holds as a section: the ones a job loads from a TOML file (a base class of
    job configs, such as ``SessionJob``, is not one)."""
    classes = config_classes()
    nested = {_nested_config(f.annotation) for c in classes for f in c.model_fields.values()}  # type: ignore[attr-defined]
    bases = {base for c in classes for base in c.__mro__[1:]}
    return [c for c in classes if c not in nested and c not in bases]


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _default(field: Any) -> str:
    from pydantic_core import PydanticUndefined

    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    if field.default_factory is not None:
        try:
            value = field.default_factory()
        except TypeError:  # a factory that takes the validated data
            return ""
        if _nested_config(type(value)) is not None:
            return "section"
        return f"`{value!r}`"
    return f"`{field.default!r}`"


def _constraints(field: Any) -> str:
    parts = []
    for item in field.metadata:
        for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"), ("pattern", "matches")):
            value = getattr(item, attr, None)
            if value is not None:
                parts.append(f"{sign} `{value}`")
    return ", ".join(parts)


def _holders(classes: list[type]) -> dict[type, list[str]]:
    """For each config class, the ``Class.field`` names that hold it as a section."""
    held: dict[type, list[str]] = {}
    for cls in classes:
        for name, field in cls.model_fields.items():  # type: ignore[attr-defined]
            nested = _nested_config(field.annotation)
            if nested is not None:
                held.setdefault(nested, []).append(f"[`{cls.__name__}.{name}`](#{cls.__name__.lower()})")
    return held


def _config_table(cls: type, out: list[str]) -> None:
    out.append("| key | type | default | description |\n|---|---|---|---|")
    for name, field in cls.model_fields.items():  # type: ignore[attr-defined]
        nested = _nested_config(field.annotation)
        if nested is not None:
            link = f"[{nested.__name__}](#{nested.__name__.lower()})"
            out.append(f"| `[{name}]` | {link} | section | {_cell(field.description or '')} |")
            continue
        allowed = _constraints(field)
        kind = f"`{_type_name(field.annotation)}`" + (f", {allowed}" if allowed else "")
        out.append(f"| `{name}` | {_cell(kind)} | {_cell(_default(field))} | {_cell(field.description or '')} |")
    out.append("")


def config_markdown() -> str:
    """The configuration reference: every config class (the ones jobs load first, then their sections), each
    with its keys, types, defaults, allowed values and descriptions."""
    top = top_level_configs()
    classes = top + [c for c in config_classes() if c not in top]
    held = _holders(classes)
    out: list[str] = []
    for cls in classes:
        out.append(f"## {cls.__name__}\n")
        where = f"`{cls.__module__}.{cls.__qualname__}`"
        if cls in held:
            where += "; a section of " + ", ".join(held[cls])
        out.append(f"{_cell(cls.__doc__ or '')} ({where})\n")
        _config_table(cls, out)
    return "\n".join(out)


# --- Python API -----------------------------------------------------------------------------------------------


def source_tree(dest: Path) -> Path:
    """Lay out the installed ``procmem`` package under ``dest/procmem`` as symlinks to its sources, and return
    ``dest``. mkdocstrings reads the sources statically, and in a checkout the subpackages ``procmem.agent``,
    ``procmem.memory``, ... live in top-level directories (``package-dir`` in pyproject.toml), where a
    static reader starting at ``procmem/`` cannot find them; this tree puts each where its import name says."""
    import shutil

    import procmem

    root = dest / "procmem"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    package_dir = Path(procmem.__file__).parent
    for child in package_dir.iterdir():
        if child.name != "__pycache__":
            (root / child.name).symlink_to(child.resolve())
    for package in procmem_packages():
        if package.count(".") != 1:
            continue  # procmem itself; deeper packages sit inside their parent's directory
        source = Path(importlib.import_module(package).__path__[0]).resolve()
        link = root / package.split(".")[1]
        if not link.exists():
            link.symlink_to(source)
    return dest


_LAYERS = ["core", "llm", "tasks", "verifiers", "memory", "agent", "distill", "eval"]
"""The documented packages in import order, lowest first; a package not named here comes after them."""


def api_packages() -> list[str]:
    """The subpackages the Python API pages document: every installed ``procmem.X`` but the CLI."""
    names = [p for p in procmem_packages() if p.count(".") == 1 and p != "procmem.cli"]
    rank = {f"procmem.{name}": i for i, name in enumerate(_LAYERS)}
    return sorted(names, key=lambda name: (rank.get(name, len(rank)), name))
