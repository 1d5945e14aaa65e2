"""Whether a MetaImage (.mha/.mhd) or NRRD (.nrrd/.nhdr) file holds all of its voxels, without SimpleITK.

SimpleITK's NRRD writer does not fail when the disk fills up (it leaves a short file), and its readers print to
stderr, or fill in garbage, on a short file. :func:`itk_file_problem` reads the text header and measures the data
(inflating compressed data as a stream): what seg3d uses to call an output complete, and to check a file it has
just written before giving it its final name.
"""
from __future__ import annotations

import zlib
from pathlib import Path

_NRRD_BYTES = {1: ("uchar", "unsigned char", "uint8", "uint8_t", "char", "signed char", "int8", "int8_t"),
               2: ("short", "short int", "signed short", "ushort", "unsigned short", "int16", "uint16", "int16_t",
                   "uint16_t"),
               4: ("int", "signed int", "uint", "unsigned int", "int32", "uint32", "int32_t", "uint32_t", "float"),
               8: ("double", "longlong", "long long", "ulonglong", "unsigned long long", "int64", "uint64",
                   "int64_t", "uint64_t")}
_NRRD_TYPE = {name: n for n, names in _NRRD_BYTES.items() for name in names}
_MET_TYPE = {"MET_UCHAR": 1, "MET_CHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
             "MET_FLOAT": 4, "MET_DOUBLE": 8, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8}
_MAX_HEADER = 1 << 16


def _prod(values) -> int:
    n = 1
    for v in values:
        n *= int(v)
    return n


def _inflated_length(read_chunks, gzip_wrapped: bool) -> int | str:
    """Bytes a zlib/gzip stream inflates to, or why it cannot be inflated."""
    d = zlib.decompressobj(wbits=31 if gzip_wrapped else 15)
    total = 0
    try:
        for chunk in read_chunks:
            total += len(d.decompress(chunk))
            if d.eof:
                break
        if not d.eof:
            return "the compressed data is cut short"
    except zlib.error as e:
        return f"the compressed data is damaged ({e})"
    return total


def _chunks(f, size: int = 1 << 22):
    while True:
        b = f.read(size)
        if not b:
            return
        yield b


def _header_lines(raw: bytes, nrrd: bool) -> tuple[dict[str, str], int] | None:
    """``(fields, offset of the data)`` of a text header at the start of ``raw`` (None when not found)."""
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(raw):
        end = raw.find(b"\n", pos)
        if end < 0:
            return None
        line = raw[pos:end].decode("latin-1").rstrip("\r")
        pos = end + 1
        if nrrd:
            if line == "":
                return fields, pos
            if line.startswith("#") or ":" not in line:
                continue
            k, _, v = line.partition(":")
            fields[k.strip().lower()] = v.lstrip("=").strip()
        else:
            k, _, v = line.partition("=")
            fields[k.strip()] = v.strip()
            if k.strip() == "ElementDataFile":
                return fields, pos
    return (fields, pos) if nrrd and "data file" in fields else None


def itk_file_problem(path: str | Path) -> str | None:
    """Why a .mha/.mhd/.nrrd/.nhdr file does not hold all of its voxels (None: it does, or cannot be told)."""
    path = Path(path)
    low = path.name.lower()
    nrrd = low.endswith((".nrrd", ".nhdr"))
    try:
        with open(path, "rb") as f:
            head = f.read(_MAX_HEADER)
    except OSError as e:
        return f"cannot read it ({e.strerror or e})"
    parsed = _header_lines(head, nrrd)
    if parsed is None:
        return "its header is incomplete"
    fields, offset = parsed
    if nrrd:
        itemsize = _NRRD_TYPE.get(fields.get("type", "").lower())
        sizes = fields.get("sizes", "").split()
        encoding = fields.get("encoding", "raw").lower()
        data_name = fields.get("data file") or fields.get("datafile")
        compressed = encoding in ("gzip", "gz")
        if encoding not in ("raw", "gzip", "gz"):
            return None
    else:
        itemsize = _MET_TYPE.get(fields.get("ElementType", ""))
        sizes = fields.get("DimSize", "").split() + [fields.get("ElementNumberOfChannels", "1")]
        data_name = fields.get("ElementDataFile")
        data_name = None if data_name == "LOCAL" else data_name
        compressed = fields.get("CompressedData", "False").lower() == "true"
    if itemsize is None or not sizes:
        return None
    need = _prod(sizes) * itemsize
    data = path.parent / data_name if data_name else path
    start = 0 if data_name else offset
    if not data.is_file():
        return f"its data file {data.name} is missing"
    try:
        with open(data, "rb") as f:
            f.seek(start)
            if compressed:
                got = _inflated_length(_chunks(f), gzip_wrapped=nrrd)
                if isinstance(got, str):
                    return got
            else:
                got = data.stat().st_size - start
    except OSError as e:
        return f"cannot read {data.name} ({e.strerror or e})"
    if got < need:
        return f"it holds {got} of {need} bytes of voxel data (truncated)"
    return None

