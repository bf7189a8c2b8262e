"""The audit's contact sheet: one cell per suspect, the picture that shows the doubted label best,
with the given and the suggested value under it.

A per-person suspect (gender, age) shows the person's ``normal`` image (the face without a mask),
a mask suspect the image itself.
"""
from __future__ import annotations

from pathlib import Path

CELL = (144, 192)     # width, height of one picture (3/8 of 384x512)
CAPTION = 60          # four lines of text under it
COLUMNS = 6


def _picture(issue, by_person: dict[str, list]) -> str | None:
    rows = by_person.get(issue.person, [])
    if issue.image:
        return next((s.path for s in rows if Path(s.path).name == issue.image), None)
    normal = [s.path for s in rows if Path(s.path).name.lower().startswith("normal")]
    return (normal or [s.path for s in rows] or [None])[0]


def draw_sheet(issues: list, samples: list):
    """A PIL image of ``issues`` in rank order, ``COLUMNS`` to a row."""
    from PIL import Image, ImageDraw, ImageFont

    from maskdata.preprocess import open_image

    by_person: dict[str, list] = {}
    for s in samples:
        by_person.setdefault(s.person, []).append(s)
    w, h = CELL
    rows = (len(issues) + COLUMNS - 1) // COLUMNS
    sheet = Image.new("RGB", (COLUMNS * w, rows * (h + CAPTION)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=11)
    for k, issue in enumerate(issues):
        x, y = (k % COLUMNS) * w, (k // COLUMNS) * (h + CAPTION)
        path = _picture(issue, by_person)
        if path is not None:
            sheet.paste(open_image(path).resize(CELL, Image.Resampling.BILINEAR), (x, y))
        what = f"{issue.field} of {issue.image.split('.')[0]}" if issue.image else issue.field
        for line, (text, colour) in enumerate(((f"#{k + 1}  p {issue.score:.2f} -> {issue.p_suggested:.2f}", "black"),
                                               (issue.person[:24], "dimgray"), (what, "black"),
                                               (f"{issue.given} -> {issue.suggested}", "firebrick"))):
            draw.text((x + 3, y + h + 2 + 14 * line), text, fill=colour, font=font)
    return sheet
