"""C++ names in patch descriptions: mangled, or demangled as c++filt prints them.

A name in an ``OLD:NEW`` line is looked up among the symbols it can name (the
target's patchable functions for OLD, the functions the patch .so defines for
NEW), in this order:

1. the symbol itself: a C name or a mangled C++ name (``_ZN3geo5clampEi``);
2. the demangled name with its parameter list (``geo::clamp(int)``), spelled
   as c++filt spells it; white space next to punctuation does not matter
   (``geo::clamp(int,int)`` is ``geo::clamp(int, int)``);
3. the demangled name without its parameter list (``geo::clamp``), which
   must then name one function: an overloaded name is refused, listing each
   overload with its mangled name.

Several symbols of one function (a constructor's C1 and C2 names, aliases)
count as one match.  The demangler is libstdc++'s ``__cxa_demangle`` (the
one c++filt uses), through the ``cxxfilt`` package.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Hashable, Mapping
from dataclasses import replace

from ulp.errors import ExitCode, UlpError
from ulp.prepared import PreparedLibrary

from .desc import SYMBOL, Description

#: the end of a parameter list, then the cv- and ref-qualifiers of a member function
_PARAMETERS_END = re.compile(r"\)(\s*(const|volatile|&&|&|noexcept))*\s*$")
_SPACE_BY_PUNCTUATION = re.compile(r"\s*([^\w\s])\s*")


class AmbiguousName(Exception):
    """Internal: a demangled name that fits several functions."""


@functools.lru_cache(maxsize=1)
def _demangler():
    import cxxfilt

    return cxxfilt


def demangle(symbol: str) -> str | None:
    """The demangled form of ``symbol``, or None if it is not a mangled C++ name."""
    if not symbol.startswith("_Z"):
        return None
    cxxfilt = _demangler()
    try:
        return cxxfilt.demangle(symbol)
    except cxxfilt.InvalidName:
        return None
    except cxxfilt.Error as error:  # no libstdc++ to demangle with
        raise UlpError(f"cannot demangle C++ names ({error}); name the function by its "
                       "mangled name (nm -D)", ExitCode.FAILURE) from None


def normalise(name: str) -> str:
    """``name`` with white space kept only where C++ needs it (between words)."""
    return _SPACE_BY_PUNCTUATION.sub(r"\1", " ".join(name.split()))


def without_parameters(demangled: str) -> list[str]:
    """The forms of ``demangled`` a user may write without its parameter list:
    ``geo::Rect::area() const`` -> ``geo::Rect::area``; a template function,
    which c++filt prints with its return type, also without it."""
    match = _PARAMETERS_END.search(demangled)
    if not match:
        return []
    text, end = demangled, match.start()
    depth = 0
    for position in range(end, -1, -1):
        depth += {")": 1, "(": -1}.get(text[position], 0)
        if depth == 0:
            head = text[:position].strip()
            forms = [normalise(head)] if head else []
            last = _last_top_level_word(head)
            if last and last != head:
                forms.append(normalise(last))
            return forms
    return []


def _last_top_level_word(text: str) -> str:
    """What follows the last space outside <> and (): a template function's
    name after its return type."""
    depth = 0
    for position in range(len(text) - 1, -1, -1):
        char = text[position]
        depth += {">": 1, ")": 1, "<": -1, "(": -1}.get(char, 0)
        if char == " " and depth == 0:
            return text[position + 1:]
    return text


def resolve(name: str, symbols: Mapping[str, Hashable]) -> str | None:
    """The symbol among ``symbols`` (symbol -> what it names; symbols naming the
    same thing are one function) that ``name`` names, or None.

    AmbiguousName if ``name`` is a demangled name fitting several functions.
    """
    if name in symbols:
        return name
    try:
        return _resolve_demangled(name, symbols)
    except UlpError:
        if SYMBOL.fullmatch(name):
            return None  # no demangler here: a plain name that is no symbol names nothing
        raise


def _resolve_demangled(name: str, symbols: Mapping[str, Hashable]) -> str | None:
    wanted = normalise(name)
    full: dict[Hashable, list[str]] = {}
    short: dict[Hashable, list[str]] = {}
    for symbol in sorted(symbols):
        demangled = demangle(symbol)
        if demangled is None:
            continue
        if normalise(demangled) == wanted:
            full.setdefault(symbols[symbol], []).append(symbol)
        elif wanted in without_parameters(demangled):
            short.setdefault(symbols[symbol], []).append(symbol)
    matches = full or short
    if len(matches) > 1:
        choices = sorted(f"{demangle(names[0])} [{names[0]}]" for names in matches.values())
        raise AmbiguousName(f"{len(matches)} functions: " + "; ".join(choices))
    if matches:
        return next(iter(matches.values()))[0]
    return None


def resolve_names(desc: Description, library: PreparedLibrary,
                  patch_functions: Mapping[str, int]) -> Description:
    """``desc`` with each OLD and NEW given as its symbol; a name that names
    nothing is left as it is, for the packer's checks to report."""
    targets = {name: function.index for function in library.functions
               for name in function.names}
    pairs = []
    for pair in desc.pairs:
        old = _resolved(desc, pair.line, pair.old, targets)
        new = _resolved(desc, pair.line, pair.new, patch_functions)
        pairs.append(replace(pair, old=old, new=new))
    return replace(desc, pairs=tuple(pairs))


def _resolved(desc: Description, line: int, name: str, symbols: Mapping[str, Hashable]) -> str:
    try:
        return resolve(name, symbols) or name
    except AmbiguousName as error:
        raise UlpError(f"{desc.where(line)}: {name} is ambiguous, it names {error}; give its "
                       "parameter list or its mangled name", ExitCode.BAD_INPUT) from None
