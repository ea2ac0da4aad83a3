"""Starting the gateway: the bind check (no API keys: loopback only) and uvicorn."""

from __future__ import annotations

from procmem.core import Home, ProcmemError
from procmem.serve.config import LOOPBACK_HOSTS, ServeConfig
from procmem.serve.keys import KeyStore, keys_path

__all__ = ["check_bind", "run_server"]


def check_bind(config: ServeConfig, home: Home) -> bool:
    """Whether API keys are required; binding beyond loopback without any active key is refused."""
    keys = KeyStore(keys_path(home))
    if config.host not in LOOPBACK_HOSTS and not keys.any_active():
        raise ProcmemError(f"refusing to bind {config.host} without API keys", where="--host",
                           fix="create one with `procmem keys create --name NAME --scopes chat,feedback`, "
                           "or bind 127.0.0.1")
    return bool(keys.keys()) or config.host not in LOOPBACK_HOSTS


def run_server(config: ServeConfig, home: Home, *, announce: bool = True) -> None:
    """Load the model and memory, then serve until interrupted."""
    import uvicorn

    from procmem.serve.app import Gateway

    keyed = check_bind(config, home)
    if announce:
        session = config.session
        print(f"procmem serve: loading {session.model} (engine {session.engine}, adapter {session.adapter}); a fresh "
              "home converts the bundled model once, which takes a minute or two ...", flush=True)
    gateway = Gateway(config, home)
    backend = gateway.host.current
    if announce:
        access = "API keys required" if keyed else "no API keys: loopback only"
        print(f"procmem serve: http://{config.host}:{config.port}/v1 model={backend.model_id} "
              f"adapter={backend.adapter_version or 'base'} ({access})", flush=True)
    uvicorn.run(gateway.app(), host=config.host, port=config.port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=10)
