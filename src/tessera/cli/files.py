"""Reading input files at the CLI edge: YAML or JSON, with errors that name the file."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import yaml

from tessera.errors import InvalidInput


def load_mapping(path: str) -> Any:
    p = pathlib.Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise InvalidInput(path, f"cannot read the file: {exc.strerror}") from None
    try:
        if p.suffix == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise InvalidInput(
            path, f"not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {exc}"
        ) from None
