"""A griffe extension (mkdocs.yml: mkdocstrings' ``extensions``): the docstrings use reST roles such as
``:class:`~procmem.core.Task``` and ``:meth:`resolve```, which Markdown would show as they are; this turns each
into inline code of its last name (``Task``, ``resolve``) for the Python API pages."""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|mod|attr|data|exc|obj|const):`~?([^`]+)`")


def _plain(match: re.Match[str]) -> str:
    return f"`{match.group(1).rsplit('.', 1)[-1]}`"


class ReSTRoles(griffe.Extension):
    """Rewrites reST cross-reference roles in every docstring to Markdown inline code."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_plain, obj.docstring.value)
