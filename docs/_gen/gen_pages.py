"""Run by mkdocs-gen-files at build time: appends the generated CLI, configuration and Python API reference to
their pages, and copies the evaluation results (reports and plots under eval/results/) into the site under
evidence/results/."""

from __future__ import annotations

import sys
from pathlib import Path

import mkdocs_gen_files

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference

ROOT = reference.ROOT

with mkdocs_gen_files.open("reference/cli.md", "a") as page:
    page.write("\n" + reference.cli_markdown())

with mkdocs_gen_files.open("reference/configuration.md", "a") as page:
    page.write("\n" + reference.config_markdown())

with mkdocs_gen_files.open("reference/python-api.md", "a") as page:
    page.write("".join(f"\n::: {package}\n" for package in reference.api_packages()))

results = ROOT / "eval" / "results"
for source in sorted(results.rglob("*")):
    if source.suffix in (".md", ".png") and source.is_file():
        target = Path("evidence/results") / source.relative_to(results)
        with mkdocs_gen_files.open(target.as_posix(), "wb") as out:
            out.write(source.read_bytes())
        if source.suffix == ".md":
            mkdocs_gen_files.set_edit_path(target.as_posix(), source.relative_to(ROOT).as_posix())
