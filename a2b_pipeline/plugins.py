"""Registries of the pipeline's open sets: corpus types and models. Imports nothing of the package.

A registry maps a name to an entry (a corpus type's ``CorpusType``, a model's config class). It finds:

- built-in entries by module name: ``<package>.<name>`` defines ``<attribute>`` (modules whose names start
  with ``_``, and the registry's ``helpers``, hold shared code);
- entries defined elsewhere, registered with :meth:`Registry.register` when their module is imported;
- entries named by an entry point of ``group`` (``name = "package.module"``), usable from configs, the CLI
  and Dagster once their distribution is installed.

Nothing is imported before it is asked for, so validating a config imports only the modules of the types it
names. configs.py validates through these registries and never imports the modules that fill them.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from collections.abc import Callable
from functools import cached_property
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

__all__ = ["CORPUS_TYPES", "MODELS", "Registry", "UnknownPluginError"]

T = TypeVar("T")


class UnknownPluginError(ValueError):
    """A name no registry entry has, or a module that doesn't define the entry it is named for."""


class Registry(Generic[T]):
    """`name -> entry` for one kind of plugin (see the module docstring); `name_of(entry)` is its name."""

    def __init__(
        self,
        kind: str,
        *,
        package: str,
        attribute: str,
        group: str,
        name_of: Callable[[T], str],
        helpers: tuple[str, ...] = (),
    ) -> None:
        self.kind, self.package, self.attribute, self.group = kind, package, attribute, group
        self.name_of, self.helpers = name_of, helpers  # helpers: modules of `package` that are no entry
        self._registered: dict[str, T] = {}

    def register(self, entry: T) -> T:
        """Register (or replace) an entry defined outside the built-in package; returns it."""
        self._registered[self.name_of(entry)] = entry
        return entry

    @cached_property
    def _builtin(self) -> tuple[str, ...]:
        spec = importlib.util.find_spec(self.package)  # runs none of the package's modules
        paths = (spec.submodule_search_locations or []) if spec else []
        modules = (m.name for m in pkgutil.iter_modules(paths) if not m.name.startswith("_"))
        return tuple(sorted(m for m in modules if m not in self.helpers))

    @cached_property
    def _entry_points(self) -> dict[str, str]:
        return {ep.name: ep.value for ep in entry_points(group=self.group)}

    def names(self) -> list[str]:
        """Every known name: built-in, registered, or named by an entry point."""
        return sorted({*self._builtin, *self._registered, *self._entry_points})

    def get(self, name: str) -> T:
        """The entry called `name` (its module is imported on first use)."""
        name = str(name)
        if name not in self._registered:
            if name in self._builtin:
                module = f"{self.package}.{name}"
            elif name in self._entry_points:
                module = self._entry_points[name].split(":", 1)[0]
            else:
                raise UnknownPluginError(f"unknown {self.kind} {name!r}; expected one of {self.names()}")
            # the module's `attribute`, or what importing it registered (a model's config class registers
            # itself when defined)
            entry: Any = getattr(importlib.import_module(module), self.attribute, self._registered.get(name))
            if entry is None or self.name_of(entry) != name:
                raise UnknownPluginError(
                    f"module {module} defines no {self.attribute} for {self.kind} {name!r}"
                )
            self._registered[name] = entry
        return self._registered[name]


# Corpus types: a module of a2b_pipeline.data.corpora (or a plugin) defining CORPUS = CorpusType(...).
CORPUS_TYPES: Registry[Any] = Registry(
    "corpus type",
    package="a2b_pipeline.data.corpora",
    attribute="CORPUS",
    group="a2b_pipeline.corpora",
    name_of=lambda kind: kind.name,
)

# Models: a config class (a configs.ModelConfig whose `name` is the model's) that names its architecture,
# registered when it is defined. A model module of a2b_pipeline.models (or a plugin's) defines both and
# MODEL = its config class; validating a config that names it imports the module, torch with it. The
# shipped models' config classes are in configs.py instead, so validating their configs (the Dagster
# sensors and assets, light CLI commands) never imports torch.
MODELS: Registry[Any] = Registry(
    "model",
    package="a2b_pipeline.models",
    attribute="MODEL",
    group="a2b_pipeline.models",
    name_of=lambda config: config.model_fields["name"].default,
    helpers=("layers",),
)
