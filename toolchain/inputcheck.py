"""Refusing a library whose headers do not hold together, before anything trusts them.

ulp-prepare hands its input to pyelftools, LIEF, keystone and capstone.  None
of them is made for hostile files: a section that runs past the end of the
file, an alignment of 0x4061, a symbol type LIEF has no name for or a size
of 2**63 made them raise odd exceptions, allocate gigabytes, write a file
that cannot be read back, or crash (issue 7).  So the headers are read here
first, with struct from the raw bytes, and every number the other libraries
will use is checked against the file and against the others: the ELF
header, every program and section header, the dynamic section against the
section headers, and every dynamic symbol and dynamic relocation.  Only a
file a linker could have written gets past; anything else is refused with
BAD_INPUT naming the first problem.

``MAX_ADDRESS`` bounds the library's address space: trampolines reach the
functions with 32-bit displacements, and nothing about a real library
comes near it.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from itertools import pairwise

from elftools.elf.enums import ENUM_D_TAG

from ulp.errors import ExitCode, UlpError
from ulp.files import open_input

#: the highest address a library may use (the end of its last segment)
MAX_ADDRESS = 1 << 30

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")
_RELA = struct.Struct("<QQq")
_DYN = struct.Struct("<qQ")
_VERDEF = struct.Struct("<HHHHIII")
_VERDAUX = struct.Struct("<II")
_VERNEED = struct.Struct("<HHIII")
_VERNAUX = struct.Struct("<IHHII")

_ET_DYN, _EM_X86_64 = 3, 62
_PT_LOAD, _PT_DYNAMIC, _PT_NOTE, _PT_PHDR, _PT_TLS = 1, 2, 4, 6, 7
_PF_X = 1
_SHT_NULL, _SHT_SYMTAB, _SHT_STRTAB, _SHT_RELA, _SHT_HASH, _SHT_DYNAMIC = 0, 2, 3, 4, 5, 6
_SHT_NOTE, _SHT_NOBITS, _SHT_REL, _SHT_DYNSYM = 7, 8, 9, 11
_SHT_GNU_HASH, _SHT_VERDEF, _SHT_VERNEED, _SHT_VERSYM = (0x6FFFFFF6, 0x6FFFFFFD, 0x6FFFFFFE,
                                                        0x6FFFFFFF)
_SHF_ALLOC, _SHF_TLS = 2, 0x400
_SHN_LORESERVE, _SHN_ABS, _SHN_COMMON = 0xFF00, 0xFFF1, 0xFFF2
#: STT_NOTYPE, OBJECT, FUNC, SECTION, FILE, COMMON, TLS, GNU_IFUNC
_SYMBOL_TYPES = {0, 1, 2, 3, 4, 5, 6, 10}
_STT_FUNC, _STT_GNU_IFUNC = 2, 10
#: STB_LOCAL, GLOBAL, WEAK, GNU_UNIQUE
_SYMBOL_BINDINGS = {0, 1, 2, 10}
_R_X86_64_MAX = 42  # R_X86_64_REX_GOTPCRELX, the last type of the x86-64 psABI
#: the dynamic tags linkers write for an x86-64 shared object (none of REL, none
#: of the range markers or other processors' tags)
_KNOWN_TAGS = {ENUM_D_TAG[name] for name in (
    "DT_NEEDED", "DT_PLTRELSZ", "DT_PLTGOT", "DT_HASH", "DT_STRTAB", "DT_SYMTAB", "DT_RELA",
    "DT_RELASZ", "DT_RELAENT", "DT_STRSZ", "DT_SYMENT", "DT_INIT", "DT_FINI", "DT_SONAME",
    "DT_RPATH", "DT_SYMBOLIC", "DT_PLTREL", "DT_DEBUG", "DT_TEXTREL", "DT_JMPREL",
    "DT_BIND_NOW", "DT_INIT_ARRAY", "DT_FINI_ARRAY", "DT_INIT_ARRAYSZ", "DT_FINI_ARRAYSZ",
    "DT_RUNPATH", "DT_FLAGS", "DT_RELRSZ", "DT_RELR", "DT_RELRENT", "DT_GNU_PRELINKED",
    "DT_CHECKSUM", "DT_GNU_HASH", "DT_TLSDESC_PLT", "DT_TLSDESC_GOT", "DT_AUDIT",
    "DT_DEPAUDIT", "DT_VERSYM", "DT_RELACOUNT", "DT_FLAGS_1", "DT_VERDEF", "DT_VERDEFNUM",
    "DT_VERNEED", "DT_VERNEEDNUM", "DT_AUXILIARY", "DT_FILTER")}

#: dynamic tags holding an address, and the section that address must start
_TAG_SECTION = {"DT_STRTAB": ".dynstr", "DT_SYMTAB": ".dynsym", "DT_RELA": ".rela.dyn",
                "DT_JMPREL": ".rela.plt", "DT_GNU_HASH": ".gnu.hash", "DT_HASH": ".hash",
                "DT_VERSYM": ".gnu.version", "DT_VERNEED": ".gnu.version_r",
                "DT_VERDEF": ".gnu.version_d", "DT_INIT_ARRAY": ".init_array",
                "DT_FINI_ARRAY": ".fini_array"}
#: dynamic tags holding a size, and the section whose size it is
_TAG_SIZE = {"DT_STRSZ": ".dynstr", "DT_RELASZ": ".rela.dyn", "DT_PLTRELSZ": ".rela.plt",
             "DT_INIT_ARRAYSZ": ".init_array", "DT_FINI_ARRAYSZ": ".fini_array"}
#: dynamic tags holding some other address in the library
_TAG_ADDRESS = {"DT_INIT", "DT_FINI", "DT_PLTGOT"}
#: dynamic tags holding an offset into .dynstr
_TAG_STRING = {"DT_NEEDED", "DT_SONAME", "DT_RPATH", "DT_RUNPATH", "DT_AUDIT", "DT_DEPAUDIT",
               "DT_AUXILIARY", "DT_FILTER"}
#: a tag of the first kind needs the tags that go with it
_TAG_NEEDS = {"DT_STRTAB": ("DT_STRSZ",), "DT_SYMTAB": ("DT_SYMENT",),
              "DT_RELA": ("DT_RELASZ", "DT_RELAENT"), "DT_JMPREL": ("DT_PLTRELSZ", "DT_PLTREL"),
              "DT_INIT_ARRAY": ("DT_INIT_ARRAYSZ",), "DT_FINI_ARRAY": ("DT_FINI_ARRAYSZ",),
              "DT_VERDEF": ("DT_VERDEFNUM",), "DT_VERNEED": ("DT_VERNEEDNUM",)}
#: the section type each section a dynamic tag points at must have
_SECTION_TYPES = {".dynstr": 3, ".dynsym": 11, ".rela.dyn": 4, ".rela.plt": 4,
                  ".gnu.hash": 0x6FFFFFF6, ".hash": 5, ".gnu.version": 0x6FFFFFFF,
                  ".gnu.version_r": 0x6FFFFFFE, ".gnu.version_d": 0x6FFFFFFD,
                  ".init_array": 14, ".fini_array": 15, ".dynamic": 6}
_TAG_VALUE = {name: value for name, value in ENUM_D_TAG.items() if isinstance(value, int)}


class Malformed(Exception):
    pass


@dataclass(frozen=True)
class Segment:
    type: int
    flags: int
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int
    align: int


@dataclass(frozen=True)
class Section:
    index: int
    name: str
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    info: int
    align: int
    entsize: int

    @property
    def has_bytes(self) -> bool:
        return self.type not in (_SHT_NULL, _SHT_NOBITS) and self.size > 0


def check_input(path: str) -> None:
    """Raise UlpError (BAD_INPUT) unless ``path`` is a consistent x86-64 shared object."""
    with open_input(path) as stream:
        size = os.fstat(stream.fileno()).st_size
        try:
            _Checker(stream, size).run()
        except Malformed as error:
            raise UlpError(f"{path}: {error}", ExitCode.BAD_INPUT) from None


class _Checker:
    def __init__(self, stream, size: int) -> None:
        self.stream = stream
        self.size = size
        self.segments: list[Segment] = []
        self.sections: list[Section] = []
        self.by_name: dict[str, Section] = {}

    def within(self, offset: int, length: int, what: str) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise Malformed(f"malformed ELF file ({what} is past the end of the file)")

    def read(self, offset: int, length: int, what: str) -> bytes:
        """Bytes of the file; never more than the file holds."""
        self.within(offset, length, what)
        self.stream.seek(offset)
        return self.stream.read(length)

    def run(self) -> None:
        header = self.read_header()
        self.read_segments(header)
        self.read_sections(header)
        self.check_sections()
        self.check_dynamic()
        self.check_symbols()
        self.check_versions(self.tags)
        self.check_relocations()

    # -- the ELF header -----------------------------------------------------------

    def read_header(self) -> tuple:
        if self.size < 4 or self.read(0, 4, "the ELF header") != b"\x7fELF":
            raise Malformed("not an ELF file")
        if self.size < _EHDR.size:
            raise Malformed("malformed ELF file (truncated ELF header)")
        header = _EHDR.unpack(self.read(0, _EHDR.size, "the ELF header"))
        ident, e_type, machine, version = header[:4]
        if ident[4] != 2 or ident[5] != 1 or machine != _EM_X86_64:
            raise Malformed("not an x86-64 ELF file")
        if e_type != _ET_DYN:
            raise Malformed("not a shared object")
        if ident[6] != 1 or version != 1:
            raise Malformed("malformed ELF file (unknown ELF version)")
        ehsize, phentsize, _phnum, shentsize = header[8:12]
        if ehsize != _EHDR.size or phentsize != _PHDR.size or shentsize != _SHDR.size:
            raise Malformed("malformed ELF file (unexpected header sizes)")
        return header

    def malformed(self, what: str) -> Malformed:
        return Malformed(f"malformed ELF file ({what})")

    # -- program headers ----------------------------------------------------------

    def read_segments(self, header: tuple) -> None:
        phoff, phnum = header[5], header[10]
        if phnum == 0 or phnum == 0xFFFF:
            raise self.malformed("no program headers")
        table = self.read(phoff, phnum * _PHDR.size, "the program header table")
        self.segments = [Segment(*_PHDR.unpack_from(table, i * _PHDR.size))
                         for i in range(phnum)]
        self.phdr_range = (phoff, phnum * _PHDR.size)
        loads = [s for s in self.segments if s.type == _PT_LOAD]
        if not loads:
            raise self.malformed("no loadable segment")
        end = 0
        for segment in loads:
            if segment.align > 1 and (segment.align & (segment.align - 1)
                                      or (segment.vaddr - segment.offset) % segment.align):
                raise self.malformed("a segment is not aligned")
            if segment.vaddr < end:
                raise self.malformed("loadable segments overlap or are out of order")
            end = segment.vaddr + segment.memsz
            if end > MAX_ADDRESS:
                raise self.malformed(f"a segment ends beyond {MAX_ADDRESS:#x}")
        if loads[0].offset != 0 or loads[0].vaddr != 0:
            raise self.malformed("the first loadable segment does not map the ELF header")
        for segment in self.segments:
            self.within(segment.offset, segment.filesz, "a segment")
            if segment.filesz > segment.memsz:
                raise self.malformed("a segment's file size exceeds its memory size")
            if segment.vaddr + segment.memsz > MAX_ADDRESS:
                raise self.malformed(f"a segment ends beyond {MAX_ADDRESS:#x}")
            if segment.type == _PT_NOTE:
                self.check_notes(self.read(segment.offset, segment.filesz, "a note segment"),
                                 "a note segment")
            if segment.type == _PT_TLS:  # its .tbss part takes no room in the segment
                if not self.in_load(segment.vaddr, segment.filesz, segment.offset):
                    raise self.malformed("the TLS segment is outside the loadable segments")
                continue
            if not segment.memsz and segment.type != _PT_LOAD:
                # it describes no memory (PT_GNU_STACK): linkers leave it at 0,
                # and LIEF would place the file's tables by its offset
                if segment.offset or segment.vaddr or segment.filesz:
                    raise self.malformed(f"empty segment of type {segment.type:#x} has an "
                                         "address")
                continue
            if segment.type == _PT_LOAD:
                continue
            if not self.in_load(segment.vaddr, segment.memsz, segment.offset,
                                file_bytes=False):
                raise self.malformed(f"segment of type {segment.type:#x} is outside the "
                                     "loadable segments")
        if not self.in_load(phoff, phnum * _PHDR.size, phoff):
            raise self.malformed("the program header table is not loaded")
        tls = [s for s in self.segments if s.type == _PT_TLS]
        if len(tls) > 1:
            raise self.malformed("more than one TLS segment")
        self.tls = tls[0] if tls else None
        dynamics = [s for s in self.segments if s.type == _PT_DYNAMIC]
        if len(dynamics) != 1:
            raise Malformed("not a shared object (no single dynamic segment)")
        self.dynamic_segment = dynamics[0]
        phdrs = [s for s in self.segments if s.type == _PT_PHDR]
        if phdrs and (phdrs[0].offset, phdrs[0].filesz) != self.phdr_range:
            raise self.malformed("PT_PHDR does not describe the program header table")

    def in_load(self, vaddr: int, size: int, offset: int | None = None,
                file_bytes: bool = True) -> Segment | None:
        """The PT_LOAD holding [vaddr, vaddr+size) (its file bytes at ``offset``)."""
        for segment in self.segments:
            if segment.type != _PT_LOAD:
                continue
            limit = segment.filesz if file_bytes else segment.memsz
            if segment.vaddr <= vaddr and vaddr + size <= segment.vaddr + limit:
                if offset is not None and offset - segment.offset != vaddr - segment.vaddr:
                    return None
                return segment
        return None

    # -- section headers ----------------------------------------------------------

    def read_sections(self, header: tuple) -> None:
        shoff, shnum, shstrndx = header[6], header[12], header[13]
        if shnum == 0 or shstrndx >= shnum:
            raise self.malformed("no usable section header table")
        table = self.read(shoff, shnum * _SHDR.size, "the section header table")
        raw = [_SHDR.unpack_from(table, i * _SHDR.size) for i in range(shnum)]
        if any(raw[0]):
            raise self.malformed("section 0 is not empty")
        names = raw[shstrndx]
        if names[1] != _SHT_STRTAB:
            raise self.malformed("the section name table is not a string table")
        strings = self.read(names[4], names[5], "the section name table")
        self.shdr_range = (shoff, shnum * _SHDR.size)
        for index, fields in enumerate(raw):
            name_offset = fields[0]
            end = strings.find(b"\0", name_offset)
            if name_offset >= len(strings) or end < 0:
                raise self.malformed(f"section {index} has a name outside the name table")
            try:
                name = strings[name_offset:end].decode("ascii")
            except UnicodeDecodeError:
                raise self.malformed(f"section {index} has a name that is not ASCII") from None
            section = Section(index, name, *fields[1:])
            if index and name in self.by_name:
                raise self.malformed(f"two sections are named {name}")
            self.sections.append(section)
            self.by_name[name] = section

    def check_sections(self) -> None:
        spans = [(0, _EHDR.size, "the ELF header"), (*self.phdr_range, "program headers"),
                 (*self.shdr_range, "section headers")]
        for section in self.sections[1:]:
            what = f"section {section.name or section.index}"
            if section.align > 1 and section.align & (section.align - 1):
                raise self.malformed(f"{what} has an alignment that is not a power of two")
            if section.addr + section.size > MAX_ADDRESS:
                raise self.malformed(f"{what} ends beyond {MAX_ADDRESS:#x}")
            if section.link >= len(self.sections):
                raise self.malformed(f"{what} links to a section that does not exist")
            if section.has_bytes:
                self.within(section.offset, section.size, what)
                if section.offset + section.size > self.shdr_range[0]:
                    # Linkers write the section header table last; LIEF
                    # mangles the names of a file that has data after it.
                    raise self.malformed(f"{what} is after the section header table")
                spans.append((section.offset, section.size, what))
            # ulp-prepare puts back the address of every NOBITS section that has one
            if section.flags & _SHF_ALLOC or (section.type == _SHT_NOBITS and section.addr):
                self.check_placement(section, what)
            self.check_table(section, what)
        spans.sort()
        for (start, length, what), (next_start, _length, other) in pairwise(spans):
            if start + length > next_start:
                raise self.malformed(f"{what} overlaps {other}")

    def check_placement(self, section: Section, what: str) -> None:
        """A loaded section lies in the PT_LOAD that maps it (and PT_TLS for TLS)."""
        if section.flags & _SHF_TLS:
            tls = self.tls
            if tls is None or not (tls.vaddr <= section.addr
                                   and section.addr + section.size <= tls.vaddr + tls.memsz):
                raise self.malformed(f"{what} is outside the TLS segment")
            if section.type == _SHT_NOBITS:  # .tbss takes no room in the PT_LOAD
                if not self.in_load(section.addr, 0, file_bytes=False):
                    raise self.malformed(f"{what} is outside the loadable segments")
                return
        if section.type == _SHT_NOBITS:
            if not self.in_load(section.addr, section.size, file_bytes=False):
                raise self.malformed(f"{what} is outside the loadable segments")
        elif section.size and not self.in_load(section.addr, section.size, section.offset):
            raise self.malformed(f"{what} is outside the loadable segments or does not "
                                 "match them")

    def check_table(self, section: Section, what: str) -> None:
        linked = self.sections[section.link]
        entries = {_SHT_SYMTAB: 24, _SHT_DYNSYM: 24, _SHT_RELA: 24, _SHT_DYNAMIC: 16}
        if section.type == _SHT_REL:
            raise self.malformed(f"{what}: REL relocations in an x86-64 library")
        if section.type in entries:
            if section.entsize != entries[section.type] or section.size % section.entsize:
                raise self.malformed(f"{what} has entries of an unexpected size")
        if section.type in (_SHT_SYMTAB, _SHT_DYNSYM, _SHT_DYNAMIC, _SHT_VERDEF,
                            _SHT_VERNEED) and linked.type != _SHT_STRTAB:
            raise self.malformed(f"{what} does not link to a string table")
        if section.type in (_SHT_RELA, _SHT_HASH, _SHT_GNU_HASH, _SHT_VERSYM) and \
                linked.type not in (_SHT_DYNSYM, _SHT_SYMTAB):
            raise self.malformed(f"{what} does not link to a symbol table")
        if section.type == _SHT_NOTE:
            self.check_notes(self.read(section.offset, section.size, what), what)
        if section.type == _SHT_STRTAB and section.size and \
                self.read(section.offset + section.size - 1, 1, what) != b"\0":
            raise self.malformed(f"{what}: string table does not end with a NUL")

    def check_notes(self, data: bytes, what: str) -> None:
        """Every note's name and descriptor stay inside the section."""
        offset = 0
        while offset < len(data):
            if offset + 12 > len(data):
                raise self.malformed(f"{what}: truncated note")
            namesz, descsz, _type = struct.unpack_from("<III", data, offset)
            name_end = offset + 12 + namesz
            offset += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
            if offset > len(data):
                raise self.malformed(f"{what}: a note runs past its section")
            if namesz and data[name_end - 1] != 0:
                raise self.malformed(f"{what}: a note's name does not end with a NUL")

    # -- the dynamic section ------------------------------------------------------

    def section(self, name: str, type_: int | None = None) -> Section | None:
        section = self.by_name.get(name)
        if section is not None and type_ is not None and section.type != type_:
            raise self.malformed(f"section {name} is not of the type its name says")
        return section

    def check_dynamic(self) -> None:
        dynamic = self.section(".dynamic", _SHT_DYNAMIC)
        dynsym = self.section(".dynsym", _SHT_DYNSYM)
        dynstr = self.section(".dynstr", _SHT_STRTAB)
        if dynamic is None or dynsym is None or dynstr is None:
            raise Malformed("not a shared object (no .dynamic, .dynsym or .dynstr)")
        if [s.index for s in self.sections if s.type in (_SHT_DYNAMIC, _SHT_DYNSYM)] != \
                sorted((dynamic.index, dynsym.index)):
            raise self.malformed("more than one dynamic section or dynamic symbol table")
        segment = self.dynamic_segment
        if (segment.offset, segment.vaddr) != (dynamic.offset, dynamic.addr) or \
                segment.filesz != dynamic.size:
            raise self.malformed("the dynamic segment and .dynamic disagree")
        if dynsym.link != dynstr.index or dynamic.link != dynstr.index:
            raise self.malformed(".dynsym or .dynamic does not use .dynstr")
        data = self.read(dynamic.offset, dynamic.size, ".dynamic")
        tags: dict[str, int] = {}
        for offset in range(0, len(data), _DYN.size):
            tag, value = _DYN.unpack_from(data, offset)
            if tag == 0:
                break
            if tag not in _KNOWN_TAGS:
                raise self.malformed(f"unknown dynamic tag {tag:#x}")
            name = ENUM_D_TAG_NAMES.get(tag, "")
            if name in _TAG_SECTION or name in _TAG_SIZE or name in _TAG_ADDRESS:
                if name in tags and name not in ("DT_NEEDED",):
                    raise self.malformed(f"{name} appears twice")
            tags.setdefault(name, value)
            if name in _TAG_STRING and value >= dynstr.size:
                raise self.malformed(f"{name} is outside .dynstr")
            if name in _TAG_ADDRESS and not self.in_load(value, 1, file_bytes=False):
                raise self.malformed(f"{name} is outside the loadable segments")
        else:
            raise self.malformed(".dynamic has no DT_NULL")
        for name, type_ in _SECTION_TYPES.items():
            self.section(name, type_)
        for tag, needs in _TAG_NEEDS.items():
            if tag in tags and not all(need in tags for need in needs):
                raise self.malformed(f"{tag} without {' or '.join(needs)}")
        for tag, name in _TAG_SECTION.items():
            section = self.by_name.get(name)
            if (tag in tags) != (section is not None and section.size > 0) or \
                    (section is not None and tag in tags and tags[tag] != section.addr):
                raise self.malformed(f"{tag} and section {name} disagree")
        for tag, name in _TAG_SIZE.items():
            section = self.by_name.get(name)
            if section is not None and tag in tags and tags[tag] != section.size:
                raise self.malformed(f"{tag} and section {name} disagree")
        expected = {"DT_SYMENT": 24, "DT_RELAENT": 24, "DT_PLTREL": _TAG_VALUE["DT_RELA"]}
        for tag, value in expected.items():
            if tag in tags and tags[tag] != value:
                raise self.malformed(f"{tag} is {tags[tag]:#x}")
        self.tags = tags

    # -- dynamic symbols and relocations -----------------------------------------

    def check_symbols(self) -> None:
        dynsym, dynstr = self.by_name[".dynsym"], self.by_name[".dynstr"]
        data = self.read(dynsym.offset, dynsym.size, ".dynsym")
        self.symbol_count = dynsym.size // _SYM.size
        versym = self.section(".gnu.version", _SHT_VERSYM)
        if versym is not None and versym.size != 2 * self.symbol_count:
            raise self.malformed(".gnu.version does not have one entry per dynamic symbol")
        self.check_hash_tables()
        for index in range(self.symbol_count):
            name, info, other, shndx, value, size = _SYM.unpack_from(data, index * _SYM.size)
            what = f"dynamic symbol {index}"
            if index == 0:
                if any((name, info, other, shndx, value, size)):
                    raise self.malformed("dynamic symbol 0 is not empty")
                continue
            if name >= dynstr.size:
                raise self.malformed(f"{what} has a name outside .dynstr")
            if shndx == 0 and value:
                # ld.so binds a GLOB_DAT to an undefined symbol with a value,
                # LIEF moves it out of the hash table: the output would differ.
                raise self.malformed(f"{what} is undefined but has a value")
            if info & 0xF not in _SYMBOL_TYPES or info >> 4 not in _SYMBOL_BINDINGS:
                raise self.malformed(f"{what} has an unknown type or binding")
            if other & ~3:
                raise self.malformed(f"{what} has unknown st_other bits")
            if shndx >= len(self.sections) and shndx < _SHN_LORESERVE or \
                    shndx >= _SHN_LORESERVE and shndx not in (_SHN_ABS, _SHN_COMMON):
                raise self.malformed(f"{what} is in a section that does not exist")
            if info & 0xF in (_STT_FUNC, _STT_GNU_IFUNC) and shndx:
                segment = self.in_load(value, max(size, 1))
                if segment is None or not segment.flags & _PF_X:
                    raise self.malformed(f"{what} is a function outside the code segments")

    def check_hash_tables(self) -> None:
        """Readers count the dynamic symbols from the hash tables: they must agree."""
        count = self.symbol_count
        gnu = self.section(".gnu.hash", _SHT_GNU_HASH)
        if gnu is not None:
            data = self.read(gnu.offset, gnu.size, ".gnu.hash")
            if len(data) < 16:
                raise self.malformed(".gnu.hash is truncated")
            buckets, first, bloom, shift = struct.unpack_from("<IIII", data)
            if (not buckets or not bloom or bloom & (bloom - 1) or shift >= 64
                    or first > count
                    or len(data) != 16 + 8 * bloom + 4 * buckets + 4 * (count - first)):
                raise self.malformed(".gnu.hash does not fit .dynsym")
            start = 16 + 8 * bloom
            heads = struct.unpack_from(f"<{buckets}I", data, start)
            chains = struct.unpack_from(f"<{count - first}I", data, start + 4 * buckets)
            if any(head and not first <= head < count for head in heads) or \
                    (chains and not chains[-1] & 1):
                raise self.malformed(".gnu.hash does not fit .dynsym")
        sysv = self.section(".hash", _SHT_HASH)
        if sysv is not None:
            data = self.read(sysv.offset, sysv.size, ".hash")
            if len(data) < 8:
                raise self.malformed(".hash is truncated")
            buckets, chains = struct.unpack_from("<II", data)
            if not buckets or chains != count or len(data) != 8 + 4 * (buckets + chains):
                raise self.malformed(".hash does not fit .dynsym")
            if any(entry >= count for entry in struct.unpack_from(f"<{buckets + chains}I",
                                                                   data, 8)):
                raise self.malformed(".hash does not fit .dynsym")

    def check_versions(self, tags: dict[str, int]) -> None:
        """Version definitions and needs stay in their sections; .gnu.version uses them."""
        dynstr = self.by_name[".dynstr"].size
        indexes = {0, 1}  # local, global
        verdef = self.section(".gnu.version_d", _SHT_VERDEF)
        if verdef is not None:
            if verdef.info != tags.get("DT_VERDEFNUM"):
                raise self.malformed(".gnu.version_d and DT_VERDEFNUM disagree")
            data = self.read(verdef.offset, verdef.size, ".gnu.version_d")
            for at, (_v, _flags, index, count, _hash, aux, _next) in self.walk(
                    data, 0, verdef.info, _VERDEF, 6, ".gnu.version_d"):
                indexes.add(index)
                for _at, (name, _next) in self.walk(data, at + aux, count, _VERDAUX, 1,
                                                    ".gnu.version_d"):
                    if name >= dynstr:
                        raise self.malformed(".gnu.version_d names a string outside .dynstr")
        verneed = self.section(".gnu.version_r", _SHT_VERNEED)
        if verneed is not None:
            if verneed.info != tags.get("DT_VERNEEDNUM"):
                raise self.malformed(".gnu.version_r and DT_VERNEEDNUM disagree")
            data = self.read(verneed.offset, verneed.size, ".gnu.version_r")
            for at, (_v, count, file, aux, _next) in self.walk(
                    data, 0, verneed.info, _VERNEED, 4, ".gnu.version_r"):
                if file >= dynstr:
                    raise self.malformed(".gnu.version_r names a file outside .dynstr")
                for _at, (_hash, _flags, index, name, _next) in self.walk(
                        data, at + aux, count, _VERNAUX, 4, ".gnu.version_r"):
                    if name >= dynstr:
                        raise self.malformed(".gnu.version_r names a string outside .dynstr")
                    indexes.add(index)
        versym = self.section(".gnu.version", _SHT_VERSYM)
        if versym is not None:
            data = self.read(versym.offset, versym.size, ".gnu.version")
            if any(index & 0x7FFF not in indexes
                   for index in struct.unpack_from(f"<{len(data) // 2}H", data)):
                raise self.malformed(".gnu.version uses a version that is not defined")

    def walk(self, data: bytes, start: int, count: int, record: struct.Struct,
             next_field: int, what: str):
        """``count`` records chained by their field ``next_field`` (a relative offset)."""
        if count > len(data) // record.size:
            raise self.malformed(f"{what} counts more entries than it can hold")
        offset = start
        for number in range(count):
            if offset + record.size > len(data):
                raise self.malformed(f"{what} runs past its section")
            fields = record.unpack_from(data, offset)
            yield offset, fields
            if number + 1 < count and not fields[next_field]:
                raise self.malformed(f"{what} ends before its count")
            offset += fields[next_field]

    def check_relocations(self) -> None:
        for section in self.sections:
            if section.type != _SHT_RELA:
                continue
            linked = self.sections[section.link]
            count = linked.size // _SYM.size
            data = self.read(section.offset, section.size, section.name)
            for offset in range(0, len(data), _RELA.size):
                r_offset, r_info, _addend = _RELA.unpack_from(data, offset)
                if r_info & 0xFFFFFFFF > _R_X86_64_MAX or r_info >> 32 >= count:
                    raise self.malformed(f"{section.name} has a bad relocation")
                if section.flags & _SHF_ALLOC and \
                        not self.in_load(r_offset, 8, file_bytes=False):
                    raise self.malformed(f"{section.name} relocates outside the library")


ENUM_D_TAG_NAMES = {value: name for name, value in _TAG_VALUE.items()}
