"""ulp-trigger's entry point: the scheduling priority first, then the rest.

A trigger started from the target's own terminal session shares the
target's CPU share with its threads (the kernel groups a session's
processes: autogroup), so with 64 busy threads there every millisecond of
CPU the trigger spends at normal priority costs about 30 ms of wall time
on 2 cores.  Importing the trigger's modules takes tens of milliseconds of
CPU: done before the raise, it took seconds (3.2 s measured).  This module
imports nothing but ulp.trigger.priority (which needs only ``os``), raises
the priority, and only then imports the command (ulp.trigger.cli).
"""

from __future__ import annotations

import sys
import types

from ulp.trigger.priority import scheduled_first

#: modules imported by another module at its top but used only on paths an
#: apply does not take: loaded when an attribute is first asked for
DEFERRED = ("inspect",)


class _Deferred(types.ModuleType):
    """Stands in for a module in sys.modules until one of its attributes is used.

    dataclasses imports inspect (ast, dis, tokenize...: ~40 million
    instructions, docs/trigger.md "Speed") only to write a docstring for a
    dataclass that has none; every dataclass on the trigger's path has one.
    """

    def __getattr__(self, attribute: str):
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        __import__(self.__name__)
        real = sys.modules[self.__name__]
        self.__dict__.update(real.__dict__)  # later lookups through this object are direct
        return getattr(real, attribute)


def defer_imports(names: tuple[str, ...] = DEFERRED) -> None:
    for name in names:
        sys.modules.setdefault(name, _Deferred(name))


def main(argv: list[str] | None = None) -> int:
    with scheduled_first():  # and every worker thread started meanwhile (priority.py)
        defer_imports()
        from ulp.trigger.cli import main as command

        return command(argv)
