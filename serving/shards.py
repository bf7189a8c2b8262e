"""Split one submission job over N machines (``--shard I/N``) and merge the parts back.

Shard ``I`` of ``N`` (0-based, like a rank) is the contiguous block of info.csv rows
``[I*n//N, (I+1)*n//N)``: deterministic, no two shards overlap, together they cover every row.
``merge_parts`` rebuilds the full submission from the part files and refuses to write it unless
every info.csv row is present exactly once::

    mask-submit --shard 0/2 --out part0.csv ...   # machine A
    mask-submit --shard 1/2 --out part1.csv ...   # machine B
    mask-submit merge part0.csv part1.csv --info info.csv --out submission.csv
"""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

from maskdata.io import atomic_write_text, read_csv

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def __post_init__(self):
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index}/{self.count} is out of range; expected I/N with 0 <= I < N")

    @classmethod
    def parse(cls, text: str) -> "Shard":
        m = _SHARD.match(text)
        if not m:
            raise ValueError(f"shard must look like I/N (e.g. 0/4 for the first of four), got {text!r}")
        return cls(int(m.group(1)), int(m.group(2)))

    def rows(self, n: int) -> range:
        """The row positions (0-based, in info.csv order) this shard owns."""
        return range(self.index * n // self.count, (self.index + 1) * n // self.count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def write_csv_text(header: list[str], rows: list[dict[str, str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([[row.get(c, "") for c in header] for row in rows])
    return buf.getvalue()


def merge_parts(parts: list[str | Path], info_csv: str | Path, out_csv: str | Path) -> int:
    """Merge shard outputs into one submission in info.csv order; return the number of rows.

    Raises ``ValueError`` naming the problem when a row is missing, appears twice (in one part or
    across parts), or a part holds an ImageID that info.csv does not have.
    """
    if not parts:
        raise ValueError("merge needs at least one part file")
    header, info_rows = read_csv(info_csv, ("ImageID",))
    if "ans" not in header:
        header = header + ["ans"]
    order = [r["ImageID"] for r in info_rows]
    known = set(order)
    found: dict[str, tuple[str, str]] = {}   # ImageID -> (ans, part file)
    for part in parts:
        _, rows = read_csv(part, ("ImageID", "ans"))
        for row in rows:
            image_id = row["ImageID"]
            if image_id not in known:
                raise ValueError(f"{part}: ImageID {image_id!r} is not in {info_csv}; wrong info.csv or part file?")
            if image_id in found:
                raise ValueError(f"ImageID {image_id!r} appears twice: in {found[image_id][1]} and {part}")
            found[image_id] = (row["ans"], str(part))
    missing = [i for i in order if i not in found]
    if missing:
        raise ValueError(f"{len(missing)} of {len(order)} rows are in no part file (e.g. {missing[:3]}); "
                         f"is a shard missing or unfinished?")
    merged = [{**row, "ans": found[row["ImageID"]][0]} for row in info_rows]
    atomic_write_text(out_csv, write_csv_text(header, merged))
    return len(merged)
