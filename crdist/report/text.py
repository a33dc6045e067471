"""Plain-text tables as the terminal shows them: padded columns, a blank line between protocols."""

from __future__ import annotations


def text_table(header: list[str], rows: list[list[str]], right: set[int]) -> str:
    """Columns padded to their widest cell, those in ``right`` aligned right (numbers); a blank line
    wherever the first column (the protocol) changes."""
    widths = [max(len(row[k]) for row in [header] + rows) for k in range(len(header))]
    line = lambda row: "  ".join(v.rjust(w) if k in right else v.ljust(w)
                                 for k, (v, w) in enumerate(zip(row, widths))).rstrip()
    out = [line(header), "  ".join("-" * w for w in widths)]
    for k, row in enumerate(rows):
        if k and row[0] != rows[k - 1][0]:
            out.append("")
        out.append(line(row))
    return "\n".join(out)
