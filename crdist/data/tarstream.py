"""The members of a tar shard, read in one pass without Python's ``tarfile``.

WebDataset reads its tar files through ``tarfile``, which builds a ``TarInfo`` per member, checks
each header's checksum twice through ``struct`` and keeps a members list. On the demo's shards (8 × 8
digits, a few hundred bytes per sample) that was 43 % of a rank's data time, more than decoding
the images. This reader does the same work on the bytes directly: about 4× faster per member
(``crdist bench data`` shows the stream's rate). Everything else stays WebDataset's: the URL
opener (``file``, ``pipe:`` and the rest of ``gopen``), the grouping of members into samples, the
shuffle and the batching.

What it reads: POSIX ustar and GNU headers, with PAX extended headers (``path`` and ``size``, as
older crdist shards and other writers have them) and GNU long names. Directories, links and
WebDataset's ``__…__`` metadata members are skipped, as WebDataset's own reader skips them. What it
refuses, naming the shard: a header whose checksum is wrong, a member cut short, and an archive
that ends without its end-of-archive block (a shard truncated at a member boundary), and, given the
manifest's records, a shard whose bytes differ from its digest.
"""

from __future__ import annotations

import io
import re
from typing import IO, Callable, Iterable, Iterator

from webdataset.filters import pipelinefilter
from webdataset.tariterators import group_by_keys, url_opener

BLOCK = 512
_REGULAR = (b"0", b"\0", b"7")  # regular file, old-style regular file, contiguous file
_PAX = (b"x", b"X")  # extended header for the next member (X: Solaris' older spelling)
_PAX_GLOBAL = b"g"
_GNU_LONGNAME = b"L"
_GNU_LONGLINK = b"K"
_META = re.compile(r"__[^/]*__($|/)")  # WebDataset's skip_meta


class TarFormatError(ValueError):
    pass


def tar_members(stream: IO[bytes]) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each regular file in the tar ``stream``, in archive order."""
    next_name: str | None = None  # from a PAX "path" or a GNU long name: the next member's
    next_size: int | None = None  # from a PAX "size"
    while True:
        header = stream.read(BLOCK)
        if len(header) < BLOCK:
            raise TarFormatError("ends without the end-of-archive block: the file is truncated"
                                 if not header else f"ends inside a member header ({len(header)} bytes)")
        if not any(header):
            return  # the end-of-archive block; what follows is padding
        _check(header)
        kind = header[156:157]
        size = next_size if next_size is not None else _number(header[124:136])
        data = _read(stream, size)
        if kind in _PAX:
            fields = _pax_fields(data)
            next_name = fields.get("path", next_name)
            next_size = int(fields["size"]) if "size" in fields else next_size
            continue
        if kind == _GNU_LONGNAME:
            next_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            continue
        if kind in (_PAX_GLOBAL, _GNU_LONGLINK):
            continue
        name = next_name if next_name is not None else _header_name(header, kind)
        next_name = next_size = None
        if kind in _REGULAR and not name.endswith("/"):
            yield name, data


def _read(stream: IO[bytes], size: int) -> bytes:
    data = stream.read(size)
    if len(data) < size:
        raise TarFormatError(f"a member is cut short ({len(data)} of {size} bytes): the file is truncated")
    padding = -size % BLOCK
    if padding and len(stream.read(padding)) < padding:
        raise TarFormatError("the last member's padding is cut short: the file is truncated")
    return data


def _check(header: bytes) -> None:
    stored = _number(header[148:156])
    # The checksum is the sum of the header's bytes with its own field counted as 8 spaces; some
    # old writers summed signed bytes, which tarfile also accepts.
    unsigned = sum(header) - sum(header[148:156]) + 8 * 0x20
    if stored != unsigned and stored != unsigned - 256 * sum(b >= 0x80 for b in header[:148] + header[156:]):
        raise TarFormatError("a member header's checksum is wrong: the file is corrupt or not a tar file")


def _number(field: bytes) -> int:
    """A numeric header field: octal text, or GNU's base-256 for values that do not fit."""
    if field[:1] in (b"\x80", b"\xff"):
        value = int.from_bytes(field[1:], "big")
        return value - 256 ** (len(field) - 1) if field[:1] == b"\xff" else value
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise TarFormatError(f"a member header holds {field!r} where a number belongs: the file is corrupt") from None


def _header_name(header: bytes, kind: bytes) -> str:
    name = header[:100].split(b"\0", 1)[0]
    if header[257:263] == b"ustar\0":  # POSIX ustar: a long name is split into prefix / name
        prefix = header[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return name.decode("utf-8", "surrogateescape")


def _pax_fields(data: bytes) -> dict[str, str]:
    """The records ``"<length> <key>=<value>\\n"`` of a PAX extended header."""
    fields, at = {}, 0
    while at < len(data) and data[at:at + 1] != b"\0":
        space = data.index(b" ", at)
        length = int(data[at:space])
        key, _, value = data[space + 1:at + length - 1].partition(b"=")
        fields[key.decode("utf-8")] = value.decode("utf-8", "surrogateescape")
        at += length
    return fields


def _shard_files(sources: Iterable[dict], handler: Callable[[Exception], bool],
                 records: dict | None = None) -> Iterator[dict]:
    """WebDataset's ``tar_file_expander`` on this reader: one dict(fname, data, __url__) per member,
    and ``{}`` at the end of each shard so that samples of two shards never merge. With ``records``
    (url → the manifest's ShardRecord), a shard is read whole and checked against its digest before
    any of its samples is given out: a damaged copy trains and scores nothing."""
    for source in sources:
        url, stream = source["url"], source["stream"]
        try:
            record = records.get(url) if records else None
            if record is not None:
                data = stream.read()
                if not record.matches(data):
                    raise TarFormatError(f"{len(data):,} bytes that differ from the digest in its manifest (written: "
                                         f"{record.bytes:,} bytes): the copy is damaged. `crdist prepare --verify "
                                         "DIR` checks every shard; preparing them again mends them")
                stream = io.BytesIO(data)
            for name, data in tar_members(stream):
                if name.startswith("__") and _META.match(name):
                    continue
                yield {"fname": name, "data": data, "__url__": url}
            yield {}
        except Exception as exn:  # noqa: BLE001 - the handler decides, as in WebDataset
            exn.args = (f"{url}: {exn.args[0] if exn.args else exn}",) + exn.args[1:]
            if not handler(exn):
                break
        finally:
            stream.close()


def _tar_samples(src: Iterable[dict], handler: Callable[[Exception], bool], records: dict | None = None
                 ) -> Iterator[dict]:
    return group_by_keys(_shard_files(url_opener(src, handler=handler), handler, records), handler=handler)


# A drop-in for ``wds.tarfile_to_samples`` in a ``wds.DataPipeline``.
tar_to_samples = pipelinefilter(_tar_samples)
