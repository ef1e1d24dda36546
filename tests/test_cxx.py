"""C++ patches (issue 9, item 4): a free function, a member function, a
virtual member function reached through an object's existing vtable, a
function in a namespace and one overload of two, named mangled or
demangled.  The worked example examples/cxx is built with its Makefile and
applied to its running program; real processes, real ptrace."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from support import BIN_DIR, ROOT, LiveProcess, tool
from ulp.errors import ExitCode, UlpError
from ulp.packer.cxxnames import normalise, resolve, without_parameters
from ulp.packer.desc import is_function_name, split_pair
from ulp.patchfile import read_patch

EXAMPLE = ROOT / "examples" / "cxx"
ORIGINAL = "area=9 perimeter=7 clamp=99,99 total=9 version=1"
FIXED = "area=12 perimeter=14 clamp=100,100 total=24 version=2"

#: the example's description with every name mangled, as nm -D lists them
MANGLED = """libgeo_fix.so
@lib/libgeo.so
_ZNK3geo4Rect4areaEv:_ZNK7geo_fix4Rect10area_fixedEv
_ZNK3geo4Rect9perimeterEv:_ZNK7geo_fix4Rect15perimeter_fixedEv
_ZN3geo5clampEiii:_ZN7geo_fix5clampEiii
_ZN3geo10total_areaEPKPKNS_5ShapeEi:_ZN7geo_fix10total_areaEPKPKN3geo5ShapeEi
_Z11geo_versionv:_Z17geo_version_fixedv
"""


@pytest.fixture(scope="module")
def example(build_dir: Path) -> Path:
    """examples/cxx built by its own Makefile."""
    out = build_dir / "cxx-example"
    result = subprocess.run(["make", "-C", str(EXAMPLE), f"O={out}", f"ULP_BIN={BIN_DIR}"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def call(app: LiveProcess) -> tuple[str, str]:
    """The results line, and the address in the rectangle's vtable slot."""
    app.send("call\n")
    line = app.next_line()
    results, slot = line.rsplit(" slot=", 1)
    return results, slot


def trigger(*args: str | Path) -> subprocess.CompletedProcess:
    return tool("ulp-trigger", "--timeout", "20", *map(str, args))


def test_the_cxx_example_applies_and_reverts(example: Path) -> None:
    """The rectangle was created before the patch: its vtable is not touched
    (the slot for area() holds the same address throughout) and dispatches to
    the fixed area(); the member function, the overload (called from the
    program and from the library's other overload), the namespaced and the
    free function all run their fixed code; the reverse patch puts every one
    back."""
    with LiveProcess([example / "app"]) as app:
        assert app.next_line() == "ready"
        before, slot = call(app)
        assert before == ORIGINAL
        applied = trigger(app.pid, example / "geo_fix.ulp")
        assert applied.returncode == 0, applied.stderr
        assert call(app) == (FIXED, slot)
        reverted = trigger(app.pid, example / "geo_fix.rev.ulp")
        assert reverted.returncode == 0, reverted.stderr
        assert call(app) == (ORIGINAL, slot)


def pack(directory: Path, text: str, name: str = "p") -> subprocess.CompletedProcess:
    (directory / f"{name}.desc").write_text(text)
    return tool("ulp-packer", directory / f"{name}.desc")


def test_mangled_and_demangled_names_make_the_same_patch(example: Path) -> None:
    """The example's description (demangled names, some without parameter
    lists, white space of its own) and the same with mangled names pack to
    the same bytes: the patch file records the symbols."""
    result = pack(example, MANGLED, "mangled")
    assert result.returncode == 0, result.stderr
    assert (example / "mangled.ulp").read_bytes() == (example / "geo_fix.ulp").read_bytes()
    units = read_patch(str(example / "geo_fix.ulp")).units
    assert [unit.old_name for unit in units] == re.findall(r"^(_Z\w+):", MANGLED, re.M)
    dump = tool("ulp-packer", "--dump", example / "geo_fix.ulp").stdout
    assert "_ZN3geo5clampEiii (geo::clamp(int, int, int))" in dump


HEAD = "libgeo_fix.so\n@lib/libgeo.so\n"


@pytest.mark.parametrize("line, code, words", [
    # an overloaded name without its parameter list: refused, each overload listed
    ("geo::clamp : geo_fix::clamp", ExitCode.BAD_INPUT,
     "geo::clamp is ambiguous, it names 2 functions: geo::clamp(int) [_ZN3geo5clampEi]; "
     "geo::clamp(int, int, int) [_ZN3geo5clampEiii]; give its parameter list or its "
     "mangled name"),
    # a destructor has several symbols for different functions (deleting, complete)
    ("geo::Shape::~Shape() : geo_fix::clamp", ExitCode.BAD_INPUT, "is ambiguous"),
    # not the function's signature (it is const): no such function
    ("geo::Rect::area() : geo_fix::Rect::area_fixed", ExitCode.NOT_PATCHABLE,
     "geo::Rect::area() is not a patchable function"),
    ("geo::clamp(long) : geo_fix::clamp", ExitCode.NOT_PATCHABLE, "is not a patchable"),
    ("geo::clamp(int) : geo_fix::clamp(int)", ExitCode.PATCH_OBJECT,
     "geo_fix::clamp(int) is not a function defined in the dynamic symbols"),
])
def test_names_that_fit_no_function_or_several_are_refused(example: Path, tmp_path: Path,
                                                          line: str, code: int,
                                                          words: str) -> None:
    for name in ("libgeo_fix.so", "lib"):
        (tmp_path / name).symlink_to(example / name)
    result = pack(tmp_path, HEAD + line + "\n")
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ulp-packer: "), result.stderr
    assert words in lines[0], lines[0]
    assert not list(tmp_path.glob("*.ulp"))


def test_description_lines_split_at_the_lone_colon() -> None:
    assert split_pair("foo:foo_fixed") == ("foo", "foo_fixed")
    assert split_pair("geo::Rect::area() const : fix::Rect::area() const") == (
        "geo::Rect::area() const", "fix::Rect::area() const")
    assert split_pair("a::b::c") is None  # no lone colon
    assert split_pair("a:b:c") is None  # two
    assert split_pair("a:::b") is None
    assert is_function_name("_ZN3geo5clampEi") and is_function_name("geo::clamp(int)")
    assert is_function_name("(anonymous namespace)::f()")
    assert not is_function_name("") and not is_function_name("foo bar\x1b[2J")
    assert not is_function_name("1abc")


def test_demangled_names_match_as_cxxfilt_prints_them() -> None:
    symbols = {"_ZN3geo5clampEi": 1, "_ZN3geo5clampEiii": 2, "_ZN3geo4RectC1Edd": 3,
               "_ZN3geo4RectC2Edd": 3, "_ZNK3geo4Rect4areaEv": 4, "geo_plain": 5}
    assert resolve("geo::clamp(int,int , int)", symbols) == "_ZN3geo5clampEiii"
    assert resolve("geo::Rect::area", symbols) == "_ZNK3geo4Rect4areaEv"
    assert resolve("geo::Rect::area()const", symbols) == "_ZNK3geo4Rect4areaEv"
    assert resolve("geo::Rect::Rect", symbols) == "_ZN3geo4RectC1Edd"  # C1, C2: one function
    assert resolve("geo_plain", symbols) == "geo_plain"
    assert resolve("geo::Rect::area() volatile", symbols) is None
    assert normalise(" a :: b ( int ,  char const * ) ") == "a::b(int,char const*)"
    assert without_parameters("void geo::swap<int>(int&, int&)") == [
        "void geo::swap<int>", "geo::swap<int>"]
    assert without_parameters("geo::F::operator()(int) const") == ["geo::F::operator()"]


def test_without_libstdcxx_symbols_still_work_and_demangled_names_say_why(monkeypatch) -> None:
    """Where cxxfilt finds no libstdc++ to demangle with (its own deferred
    error), symbols resolve as before and a demangled name is refused in one
    line saying what to give instead."""
    import cxxfilt

    missing = cxxfilt.DeferedErrorDemangler(cxxfilt.LibraryNotFound("no libstdc++"))
    monkeypatch.setattr(cxxfilt, "default_demangler", missing)
    symbols = {"_ZN3geo5clampEi": 1, "plain": 2}
    assert resolve("_ZN3geo5clampEi", symbols) == "_ZN3geo5clampEi"
    assert resolve("plain", symbols) == "plain"
    assert resolve("typo", symbols) is None
    with pytest.raises(UlpError) as caught:
        resolve("geo::clamp(int)", symbols)
    assert caught.value.exit_code == ExitCode.FAILURE
    assert "cannot demangle C++ names" in str(caught.value)
    assert "mangled name" in str(caught.value)
