"""The web console of ``procmem serve`` at ``/ui``: overview, episodes, memory, adapters and runs, built from the same
data the CLI reads (the call log, the tenant's procedural memory, the adapter registry, the run directories).

It is part of the gateway (no separate service) and works offline: the templates (Jinja2, autoescaped), htmx and
the stylesheet ship in the package. Access follows the API's keys (see :mod:`._auth`). :func:`console_routes` is
what :meth:`procmem.serve.app.Gateway.app` mounts. See docs/guides/console.md.
"""

from procmem.serve.console._routes import console_routes

__all__ = ["console_routes"]
