"""Pascal VOC XML boxes of test images, mapped through the loader's resize and crop (conventions:
`auglens.data.folder`)."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import AuglensError
from .images import (
    Geometry,
    pixel_range,
)


@dataclass
class VocAnnotation:
    """One VOC XML file: the annotated image size (None if absent) and its objects as
    (name, (xmin, ymin, xmax, ymax)) in the file's coordinates."""

    path: Path
    width: int | None
    height: int | None
    objects: list[tuple[str, tuple[float, float, float, float]]] = field(default_factory=list)


def read_voc(path: str | os.PathLike) -> VocAnnotation:
    """Parse a Pascal VOC / ImageNet XML annotation; malformed files raise AuglensError."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise AuglensError(f"annotation file not found: {path}") from None
    except ET.ParseError as e:
        raise AuglensError(f"malformed annotation file {path}: {e}") from None

    def num(node: ET.Element | None, tag: str) -> float | None:
        el = None if node is None else node.find(tag)
        if el is None or el.text is None or not el.text.strip():
            return None
        try:
            return float(el.text)
        except ValueError:
            raise AuglensError(f"annotation {path}: <{tag}> is not a number: {el.text!r}") from None

    size = root.find("size")
    w, h = num(size, "width"), num(size, "height")
    ann = VocAnnotation(path, None if not w else int(w), None if not h else int(h))
    for k, obj in enumerate(root.iter("object")):
        name = (obj.findtext("name") or "").strip()
        bb = obj.find("bndbox")
        coords = [num(bb, t) for t in ("xmin", "ymin", "xmax", "ymax")]
        if bb is None or any(c is None for c in coords):
            raise AuglensError(
                f"annotation {path}: object {k} ('{name}') has no complete <bndbox> "
                "(xmin, ymin, xmax, ymax)"
            )
        ann.objects.append((name, tuple(coords)))  # type: ignore[arg-type]
    return ann


def voc_boxes(
    ann: VocAnnotation,
    class_name: str,
    image_wh: tuple[int, int],
    geometry: Geometry,
    origin: int = 0,
    clip: bool = False,
) -> tuple[list[tuple[int, int, int, int]], int]:
    """Boxes of ``class_name`` in output pixels (x1, y1, x2, y2, exclusive ends; empty ones
    dropped) and how many were clipped to the image. Conventions: module docstring."""
    iw, ih = image_wh
    aw, ah = ann.width or iw, ann.height or ih
    if abs((iw / aw) / (ih / ah) - 1.0) > 0.02:
        raise AuglensError(
            f"annotation {ann.path} is for a {aw}×{ah} image but the image is {iw}×{ih} "
            "(different aspect ratio: wrong file?)"
        )
    fx, fy = iw / aw, ih / ah
    out, clipped = [], 0
    for name, (xmin, ymin, xmax, ymax) in ann.objects:
        if name != class_name:
            continue
        x1, y1, x2, y2 = xmin - origin, ymin - origin, xmax - origin + 1, ymax - origin + 1
        if xmax < xmin or ymax < ymin:
            raise AuglensError(
                f"annotation {ann.path}: box ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g}) of '{name}' "
                "has xmax < xmin or ymax < ymin"
            )
        if x1 < 0 or y1 < 0 or x2 > aw or y2 > ah:
            if not clip:
                lo = "0" if origin == 0 else "1"
                raise AuglensError(
                    f"annotation {ann.path}: box ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g}) of "
                    f"'{name}' lies outside the {aw}×{ah} image (pixel indices from {lo} to "
                    f"{aw - 1 + origin:g}×{ah - 1 + origin:g}, box_origin={origin}); set "
                    "clip_boxes: true to clip such boxes"
                )
            clipped += 1
            x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, aw), min(y2, ah)
        mx1, my1, mx2, my2 = geometry.map_box((x1 * fx, y1 * fy, x2 * fx, y2 * fy), iw, ih)
        a, b = pixel_range(mx1, mx2, geometry.size)
        c, d = pixel_range(my1, my2, geometry.size)
        if b > a and d > c:
            out.append((a, c, b, d))
    return out, clipped


def _xml_index(boxes_dir: Path) -> dict[tuple[str, str], Path]:
    """(parent folder name or "", stem) → XML path for every .xml under ``boxes_dir``."""
    index: dict[tuple[str, str], Path] = {}
    for dirpath, dirnames, filenames in os.walk(boxes_dir, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        parent = "" if Path(dirpath) == boxes_dir else Path(dirpath).name
        for f in filenames:
            if f.lower().endswith(".xml"):
                index[(parent, f[:-4])] = Path(dirpath) / f
                index.setdefault(("", f[:-4]), Path(dirpath) / f)
    return index


