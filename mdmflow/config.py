"""Settings from the environment, each with a documented default (see README)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mdmflow.secret_file import new_token, read_or_create


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


@dataclass(frozen=True)
class Settings:
    temporal_address: str
    temporal_namespace: str
    task_queue: str
    var_dir: Path
    db_url: str
    mdm_url: str | None
    mdm_kind: str
    mdm_api_key: str
    webhook_hmac_key: str | None
    # MicroMDM cannot sign: "user:secret" from its webhook URL, or a secret path segment
    webhook_basic_auth: str | None
    webhook_path_token: str | None
    api_key: str
    listen_host: str
    listen_port: int

    @property
    def embedded_temporal(self) -> bool:
        return _env("TEMPORAL_ADDRESS") is None


def api_key_from(var_dir: Path) -> str:
    """``MDMFLOW_API_KEY``, else a random key generated once and kept in ``var/api_key``."""
    explicit = _env("MDMFLOW_API_KEY")
    if explicit:
        return explicit
    return read_or_create(var_dir / "api_key", new_token)


def load() -> Settings:
    var_dir = Path(_env("MDMFLOW_VAR_DIR", "var") or "var").resolve()
    listen = _env("MDMFLOW_LISTEN", "127.0.0.1:9003") or "127.0.0.1:9003"
    host, _, port = listen.rpartition(":")
    return Settings(
        temporal_address=_env("TEMPORAL_ADDRESS")
        or f"127.0.0.1:{_env('MDMFLOW_TEMPORAL_PORT', '7233')}",
        temporal_namespace=_env("TEMPORAL_NAMESPACE", "default") or "default",
        task_queue=_env("MDMFLOW_TASK_QUEUE", "mdmflow") or "mdmflow",
        var_dir=var_dir,
        db_url=_env("MDMFLOW_DB_URL") or f"sqlite:///{var_dir / 'mdmflow.db'}",
        mdm_url=_env("MDMFLOW_MDM_URL"),
        mdm_kind=_env("MDMFLOW_MDM_KIND", "nanomdm") or "nanomdm",
        mdm_api_key=_env("MDMFLOW_MDM_API_KEY", "nanomdm") or "",
        webhook_hmac_key=_env("MDMFLOW_WEBHOOK_HMAC_KEY"),
        webhook_basic_auth=_env("MDMFLOW_WEBHOOK_BASIC_AUTH"),
        webhook_path_token=_env("MDMFLOW_WEBHOOK_PATH_TOKEN"),
        api_key=api_key_from(var_dir),
        listen_host=host or "127.0.0.1",
        listen_port=int(port),
    )
