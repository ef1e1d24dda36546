"""A library prepared by ulp-prepare, as the packer and the trigger see it."""

from __future__ import annotations

from dataclasses import dataclass, field

from ulp import layout
from ulp.elfinfo import open_elf, read_vaddr, require_x86_64_shared_object
from ulp.errors import ExitCode, UlpError


@dataclass(frozen=True)
class PreparedFunction:
    names: tuple[str, ...]  # every .dynsym name that points at the trampoline
    index: int
    entry: int  # link-time address of the function
    body: int  # first instruction after the entry NOPs
    func_desc: int  # address of its FuncDesc in .ulp.data
    trampoline: int
    has_endbr64: bool

    @property
    def name(self) -> str:
        return self.names[0]


@dataclass
class PreparedLibrary:
    path: str
    lib_desc_vaddr: int
    desc: layout.LibDesc
    functions: list[PreparedFunction] = field(default_factory=list)

    @property
    def identity(self) -> bytes:
        return self.desc.identity

    @property
    def build_id(self) -> bytes:
        return self.desc.build_id

    def function(self, name: str) -> PreparedFunction:
        for function in self.functions:
            if name in function.names:
                return function
        raise KeyError(name)

    @classmethod
    def open(cls, path: str) -> PreparedLibrary:
        """Read ``path``; raise UlpError if it is not a prepared library."""
        with open_elf(path) as elf:
            require_x86_64_shared_object(elf, path, executable_too=True)
            data = elf.get_section_by_name(layout.DATA_SECTION)
            if data is None:
                raise UlpError(
                    f"{path}: not prepared for live patching (run ulp-prepare on it)",
                    ExitCode.NOT_PATCHABLE,
                )
            lib_desc_vaddr = data["sh_addr"]
            try:
                desc = layout.LibDesc.unpack(data.data())
            except ValueError as error:
                raise UlpError(f"{path}: {error}", ExitCode.BAD_INPUT) from None
            library = cls(path, lib_desc_vaddr, desc)
            library.functions = _read_functions(elf, library)
            return library


def _read_functions(elf, library: PreparedLibrary) -> list[PreparedFunction]:
    desc = library.desc
    funcs_base = library.lib_desc_vaddr + desc.funcs_delta
    tramp_base = library.lib_desc_vaddr + desc.trampolines_delta
    names: dict[int, list[str]] = {}
    dynsym = elf.get_section_by_name(".dynsym")
    if dynsym is None:
        raise UlpError(f"{library.path}: no dynamic symbol table", ExitCode.BAD_INPUT)
    for symbol in dynsym.iter_symbols():
        offset = symbol["st_value"] - tramp_base
        if symbol["st_shndx"] != "SHN_UNDEF" and 0 <= offset < desc.nfuncs * layout.TRAMPOLINE_SIZE:
            names.setdefault(offset // layout.TRAMPOLINE_SIZE, []).append(symbol.name)
    functions = []
    for index in range(desc.nfuncs):
        vaddr = funcs_base + index * layout.FUNC_DESC_SIZE
        try:
            fdesc = layout.FuncDesc.unpack(read_vaddr(elf, vaddr, layout.FUNC_DESC_SIZE))
        except ValueError as error:
            raise UlpError(f"{library.path}: {error}", ExitCode.BAD_INPUT) from None
        functions.append(
            PreparedFunction(
                names=tuple(names.get(index, [f"#{index}"])),
                index=index,
                entry=vaddr + fdesc.entry_delta,
                body=vaddr + fdesc.body_delta,
                func_desc=vaddr,
                trampoline=tramp_base + index * layout.TRAMPOLINE_SIZE,
                has_endbr64=fdesc.has_endbr64,
            )
        )
    return functions
