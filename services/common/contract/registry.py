"""Registration beside the definition: `@method(...)` on an engine function puts it in its
technique's registry, and `NamedRegistry.register` on a class puts a pluggable scorer (an
importance score, a loss) in a name -> object registry whose names are the config's allowed values.

Torch-free and NATS-free, like the rest of the contract: the decorators only record declarations.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from services.common.contract.config import MethodConfig
from services.common.contract.engine_api import (FLOAT_INPUT, MODEL_KINDS, Method, ProgressMetric, ProgressReporter,
                                                 StageResult)

Run = Callable[[Any, Path, Path, ProgressReporter], StageResult]
T = TypeVar("T")


class RegistrationError(TypeError):
    """A declaration that cannot be registered (a name taken twice, a kind nobody knows); raised at
    import, so a broken method never reaches a running service."""


class MethodRegistry(dict[str, Method]):
    """One technique's methods by name (what its engine module exposes as METHODS)."""

    def __init__(self, technique: int) -> None:
        super().__init__()
        self.technique = technique
        self._defined_in: dict[str, str] = {}

    def add(self, entry: Method, defined_in: str) -> None:
        if not entry.name or entry.name != entry.name.strip().lower() or " " in entry.name:
            raise RegistrationError(f"method {entry.name!r}: a name is lower-case words joined by '-'")
        if entry.name in self and self._defined_in[entry.name] != defined_in:
            raise RegistrationError(f"method {entry.name!r} is registered twice: by {self._defined_in[entry.name]} "
                                    f"and by {defined_in}")
        if not (isinstance(entry.config_cls, type) and issubclass(entry.config_cls, MethodConfig)):
            raise RegistrationError(f"method {entry.name!r}: config must be a MethodConfig class, not "
                                    f"{entry.config_cls!r}")
        unknown = [k for k in entry.model_kinds if k not in MODEL_KINDS]
        if not entry.model_kinds or unknown:
            raise RegistrationError(f"method {entry.name!r}: model_kinds {list(entry.model_kinds)} must name at least "
                                    f"one of {', '.join(MODEL_KINDS)}")
        if not entry.summary:
            raise RegistrationError(f"method {entry.name!r}: a summary is required (Describe and the docs show it)")
        self[entry.name] = entry
        self._defined_in[entry.name] = defined_in

    def method(self, name: str, *, config: type[MethodConfig], summary: str, produces: tuple[int, ...],
               model_kinds: tuple[str, ...], accepts: tuple[int, ...] = (FLOAT_INPUT,),
               metrics: tuple[ProgressMetric, ...] = ()) -> Callable[[Run], Run]:
        """Registers the decorated (config, src, dst, reporter) -> StageResult function as `name`.
        `produces`: the ArtifactFormat values it writes (empty: its input's); `accepts`: those it
        reads (empty: any); `model_kinds`: the MODEL_KINDS it takes; `metrics`: what its progress
        events carry. The function comes back unchanged, so one function may carry several."""

        def register(run: Run) -> Run:
            entry = Method(name, summary, config, run, tuple(accepts), tuple(produces), tuple(metrics),
                           tuple(model_kinds))
            self.add(entry, _where(run))
            return run

        return register


_REGISTRIES: dict[int, MethodRegistry] = {}


def registry(technique: int) -> MethodRegistry:
    """The technique's registry (a common_pb2.Technique value), filled by the modules that declare
    its methods: an engine module imports them and exposes this as METHODS."""
    return _REGISTRIES.setdefault(technique, MethodRegistry(technique))


def method(technique: int, name: str, **declared) -> Callable[[Run], Run]:
    """`@method(TECHNIQUE_QUANTIZER, "gptq", config=GptqConfig, summary=..., produces=(...),
    model_kinds=(...), metrics=(...))` on the engine function; see MethodRegistry.method."""
    return registry(technique).method(name, **declared)


class NamedRegistry(dict[str, T], Generic[T]):
    """Pluggable objects by name (importance scores, loss terms). A new one is one class carrying
    `name` (and `description`), decorated with `register`; a config field typed `choices()`
    allows exactly the registered names, so validation and Describe follow the registry."""

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what

    def register(self, cls: type[T]) -> type[T]:
        name = getattr(cls, "name", "")
        if not name:
            raise RegistrationError(f"{self.what} {cls.__qualname__}: a class attribute `name` is required")
        taken = _where(type(self[name])) if name in self else ""
        if taken and taken != _where(cls):  # the same class again is a module reloaded
            raise RegistrationError(f"{self.what} {name!r} is registered twice: by {taken} and by {_where(cls)}")
        self[name] = cls()
        return cls

    def names(self) -> tuple[str, ...]:
        return tuple(self)

    def choices(self) -> Any:
        """The config field type allowing exactly the registered names (call after every register)."""
        if not self:
            raise RegistrationError(f"no {self.what} is registered yet")
        return Literal[self.names()]

    def described(self, lead: str) -> str:
        """A config field's description: `lead`, then each registered name with its description."""
        return f"{lead}: " + "; ".join(f"{name}: {getattr(obj, 'description', '')}" for name, obj in self.items())

    def pick(self, name: str, field: str) -> T:
        """The object registered as `name`; ValueError naming `field` and the allowed names otherwise."""
        try:
            return self[name]
        except KeyError:
            raise ValueError(f"{field}: unknown {self.what} {name!r}; allowed: {', '.join(self)}") from None


def _where(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"
