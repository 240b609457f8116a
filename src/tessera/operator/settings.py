"""The operator's settings: parsed once, at start-up, from its environment (typed, validated).

`Settings` is what one reconcile pass needs (the default images); `OperatorSettings` adds the
operator loop's timing. Nothing below the edge reads an environment variable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tessera.errors import InvalidInput

from .manifests import Images

DEFAULT_WORKER_IMAGE = "ghcr.io/tessera-dev/tessera-worker:0.1.0"
DEFAULT_ROUTER_IMAGE = "ghcr.io/tessera-dev/tessera-router:0.1.0"
DEFAULT_RESYNC_S = 60.0
DEFAULT_RECHECK_S = 10.0


@dataclass(frozen=True)
class Settings:
    """What a reconcile pass needs besides the cluster: the images a spec does not name."""

    images: Images


@dataclass(frozen=True)
class OperatorSettings:
    reconcile: Settings
    resync_s: float = DEFAULT_RESYNC_S  # every LLMDeployment, this often
    recheck_s: float = DEFAULT_RECHECK_S  # one waiting for keys or pods, this often

    @property
    def tick_s(self) -> float:
        """The resync loop's period: the re-check, never longer than a full resync."""
        return min(self.recheck_s, self.resync_s)


class _Env(BaseModel):
    """The variables, by name (so that a validation error names the variable)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    worker_image: str = Field(DEFAULT_WORKER_IMAGE, alias="TESSERA_WORKER_IMAGE", min_length=1)
    router_image: str = Field(DEFAULT_ROUTER_IMAGE, alias="TESSERA_ROUTER_IMAGE", min_length=1)
    pull_policy: str = Field("IfNotPresent", alias="TESSERA_IMAGE_PULL_POLICY", min_length=1)
    vllm_image: str = Field("", alias="TESSERA_VLLM_IMAGE")  # empty: manifests_vllm's default
    resync_s: float = Field(DEFAULT_RESYNC_S, alias="TESSERA_RESYNC_SECONDS", gt=0)
    recheck_s: float = Field(DEFAULT_RECHECK_S, alias="TESSERA_RECHECK_SECONDS", gt=0)


def from_env(env: Mapping[str, str]) -> OperatorSettings:
    """The settings from TESSERA_* variables; InvalidInput names the first bad one."""
    try:
        raw = _Env.model_validate(dict(env))
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "environment"
        raise InvalidInput(name, first["msg"]) from None
    images = Images(raw.worker_image, raw.router_image, raw.pull_policy, raw.vllm_image or None)
    return OperatorSettings(Settings(images), resync_s=raw.resync_s, recheck_s=raw.recheck_s)


def defaults() -> OperatorSettings:
    """The settings with no variable set (before start-up, and in tests)."""
    return from_env({})
