"""Base class for typed configs: frozen, unknown keys rejected, errors that name the YAML path."""

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from ctr.errors import ConfigError

T = TypeVar("T", bound="StrictConfig")


class StrictConfig(BaseModel):
    """A frozen pydantic model that rejects unknown keys.

    Use :meth:`parse` to build one from a YAML mapping: validation problems become a
    :class:`~ctr.errors.ConfigError` whose message starts with the dotted YAML path.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    @classmethod
    def parse(cls: type[T], raw: Any, path: str = "") -> T:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"expected a mapping, got {type(raw).__name__}", path)
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise config_error_from(exc, path, cls) from None


def config_error_from(exc: ValidationError, path: str, cls: type[BaseModel] | None = None) -> ConfigError:
    """Turn a pydantic error into one :class:`ConfigError` naming the first bad YAML path."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    full = ".".join(p for p in (path, loc) if p)
    if err["type"] == "extra_forbidden":
        known = sorted(cls.model_fields) if cls is not None and "." not in loc else []
        hint = _closest(str(err["loc"][-1]), known)
        msg = "unknown key" + (f"; did you mean {hint}?" if hint else "")
        if known:
            msg += f" (allowed: {', '.join(known)})"
        return ConfigError(msg, full)
    return ConfigError(f"{err['msg']} (got {err.get('input')!r})", full)


def _closest(word: str, candidates: list[str]) -> str | None:
    import difflib

    hits = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return hits[0] if hits else None
