"""Secrets read from files (Docker and Kubernetes secrets): ``CLICKHOUSE_PASSWORD_FILE=/run/secrets/clickhouse_password``,
a settings source of :class:`streams.settings.Settings`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic_settings import PydanticBaseSettingsSource

from streams.errors import ConfigError

#: the secrets a ``<VARIABLE>_FILE`` environment variable may name a file for: (settings key path, variables)
SECRET_FILE_VARIABLES: list[tuple[tuple[str, ...], tuple[str, ...]]] = [
    (("CLICKHOUSE_URL",), ("CLICKHOUSE_URL_FILE", "EHRSTREAM_CLICKHOUSE_URL_FILE")),
    (("CLICKHOUSE_PASSWORD",), ("CLICKHOUSE_PASSWORD_FILE", "EHRSTREAM_CLICKHOUSE_PASSWORD_FILE")),
    (("kafka", "sasl_password"), ("EHRSTREAM_KAFKA_SASL_PASSWORD_FILE",)),
    (("kafka", "ssl_key_password"), ("EHRSTREAM_KAFKA_SSL_KEY_PASSWORD_FILE",)),
    (("schema_registry_password",), ("EHRSTREAM_SCHEMA_REGISTRY_PASSWORD_FILE",)),
]


class SecretFileSource(PydanticBaseSettingsSource):
    """Secrets from files (Docker/Kubernetes secrets): ``CLICKHOUSE_PASSWORD_FILE=/run/secrets/clickhouse_password``.
    Ranks below the variable itself; the file's content, trailing newline stripped, is the value."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover (unused)
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for path, variables in SECRET_FILE_VARIABLES:
            name = next((v for v in variables if os.environ.get(v)), None)
            if name is None:
                continue
            file = Path(os.environ[name])
            if not file.is_file():
                raise ConfigError("settings", f"{name}: no such file: {file}")
            target = values
            for key in path[:-1]:
                target = target.setdefault(key, {})
            target[path[-1]] = file.read_text().rstrip("\r\n")
        return values
