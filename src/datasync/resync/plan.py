"""The plugin order: dependency levels, and who waits for a dependency not registered."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..errors import ConfigError, DependencyCycleError

__all__ = ["plan", "topological_levels"]


def topological_levels(deps: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Group names into levels: each name only after every name it depends on.

    Unknown dependencies and cycles are ``ConfigError``s naming them.
    """
    for name, ds in deps.items():
        for d in ds:
            if d not in deps:
                raise ConfigError(f"plugin {name!r} depends on unknown plugin {d!r}")
    # Cycle search first, so the error names the cycle rather than "cannot order".
    color: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        color[n] = 1
        stack.append(n)
        for d in deps[n]:
            if color.get(d) == 1:
                raise DependencyCycleError([*stack[stack.index(d) :], d])
            if d not in color:
                visit(d)
        stack.pop()
        color[n] = 2

    for n in sorted(deps):
        if n not in color:
            visit(n)
    levels: list[list[str]] = []
    placed: set[str] = set()
    while len(placed) < len(deps):
        level = sorted(n for n in deps if n not in placed and all(d in placed for d in deps[n]))
        levels.append(level)
        placed.update(level)
    return levels


def plan(deps: Mapping[str, Sequence[str]]) -> tuple[list[list[str]], dict[str, str]]:
    """Levels of the names that can run, and those waiting for a dependency (name: dep).

    A name whose dependency is not among ``deps`` (closed, or not yet registered) waits,
    and so does everything that depends on it; that is not a failure. Cycles among the
    others are a ``DependencyCycleError``.
    """
    waiting: dict[str, str] = {}
    changed = True
    while changed:
        changed = False
        for name, ds in deps.items():
            if name in waiting:
                continue
            for dep in ds:
                if dep not in deps or dep in waiting:
                    waiting[name] = dep
                    changed = True
                    break
    runnable = {n: ds for n, ds in deps.items() if n not in waiting}
    return topological_levels(runnable), waiting
