"""The interactive CAM gallery: baseline vs every variant on the same test images, per method,
rendered from the stored raw maps; a <select> picks the image."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib import colormaps  # noqa: E402

from ..errors import AuglensError  # noqa: E402
from ..explain.store import read_explanation  # noqa: E402
from ..utils import upsample  # noqa: E402
from .html import esc, img_html  # noqa: E402
from .load import Run  # noqa: E402

METHOD_NAMES = {"gradcam": "Grad-CAM", "iba": "IBA"}


@dataclass
class Gallery:
    """The gallery fragment, the images it shows, and what was missing."""

    html: str = ""
    image_ids: list[int] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)
    seed: int | None = None
    missing: list[str] = field(default_factory=list)


def overlay_png(image: np.ndarray | None, cam: np.ndarray) -> bytes:
    """PNG of a raw map min-max scaled (display only), jet, blended 50 % over the uint8 (3, H, W)
    image (the map alone when there is no image); the map is upsampled bilinearly to the image."""
    if image is not None:
        h, w = image.shape[-2:]
        cam = upsample(torch.as_tensor(cam[None]).float(), (h, w))[0].numpy()
    lo, hi = float(np.nanmin(cam)), float(np.nanmax(cam))
    norm = (cam - lo) / (hi - lo) if hi > lo else np.zeros_like(cam)
    rgb = colormaps["jet"](np.nan_to_num(norm))[..., :3]
    if image is not None:
        rgb = 0.5 * rgb + 0.5 * image.transpose(1, 2, 0).astype(np.float64) / 255.0
    return _png(rgb)


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    mpimg.imsave(buf, np.clip(rgb, 0, 1), format="png")
    return buf.getvalue()


def _test_images(run: Run) -> tuple[_Images | None, list[str] | None, str | None]:
    """(test images uint8, class names, reason if unavailable) of the run's dataset."""
    cfg = run.config
    if cfg is None:
        why = run.reason(run.rel(run.rundir.experiment))
        return None, None, why + "; images not shown, maps only"
    try:
        from ..data import load_dataset

        data = load_dataset(cfg.cells()[0][2])
    except Exception as e:  # noqa: BLE001 - the gallery still shows the maps
        return None, None, f"dataset '{cfg.data.name}' could not be loaded ({e}); maps only"
    return _Images(data.test.images), list(data.class_names), None


class _Images:
    """Test images as uint8 arrays (3, H, W), decoded one at a time on access (a lazy dataset is
    never decoded whole)."""

    def __init__(self, images: object) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.images[int(i)].numpy()


def _class_names(run: Run) -> list[str] | None:
    for rec in run.records.values():
        names = rec.get("dataset", {}).get("class_names")
        if names:
            return list(names)
    return None


def build_gallery(run: Run, highlight: dict[int, str], n_default: int = 6) -> Gallery:
    """Gallery of ``n_default`` spread-out test images plus the ``highlight`` ids (id → note)."""
    from ..analysis.run_a import gallery_ids

    out = Gallery()
    methods = run.explained_methods
    if not methods:
        out.missing.append(run.reason(run.rel(run.rundir.explanations_root) + "/") + "; no maps "
                           "to show")
        return out
    base = run.baseline
    seed = next((s for s in run.seeds
                 if run.rundir.explanation(methods[0], base, s).is_file()), None)
    if seed is None:
        first = run.rundir.explanation(methods[0], base, run.seeds[0] if run.seeds else 0)
        out.missing.append(run.reason(run.rel(first)))
        return out
    out.seed = seed
    maps: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for method in methods:
        maps[method] = {}
        for variant in [base] + [v for v in run.variants if v != base]:
            rel = run.rel(run.rundir.explanation(method, variant, seed))
            try:
                t, _ = read_explanation(run.path(rel))
            except AuglensError as e:
                out.missing.append(run.reason(rel) if not run.path(rel).is_file() else str(e))
                continue
            maps[method][variant] = {k: t[k].float().numpy() if k == "maps" else t[k].numpy()
                                     for k in ("maps", "targets", "labels", "image_ids")}
        if not maps[method]:
            del maps[method]
    if not maps:
        return out
    first = next(iter(next(iter(maps.values())).values()))
    n = len(first["image_ids"])
    ids = [int(i) for i in gallery_ids(n, n_default)]
    ids = [i for i in highlight if 0 <= i < n] + [i for i in ids if i not in highlight]
    images, names, why = _test_images(run)
    if why:
        out.missing.append(why)
    names = names or _class_names(run)
    out.image_ids, out.methods = ids, list(maps)
    out.html = _render(ids, maps, images, names, first, highlight, base)
    return out


def _name(names: list[str] | None, c: int) -> str:
    return names[c] if names and 0 <= c < len(names) else f"class {c}"


def _render(ids: list[int], maps: dict, images: np.ndarray | None, names: list[str] | None,
            first: dict, highlight: dict[int, str], base: str) -> str:
    pos = {int(i): k for k, i in enumerate(first["image_ids"])}
    options, items = [], []
    for n, image_id in enumerate(ids):
        k = pos[image_id]
        label = _name(names, int(first["labels"][k]))
        note = f" — {highlight[image_id]}" if image_id in highlight else ""
        options.append(f'<option value="{image_id}">image {image_id} ({esc(label)}){esc(note)}'
                       "</option>")
        img = None if images is None or image_id >= len(images) else images[image_id]
        rows = [f'<p class="note">Test image {image_id}, true class {esc(label)}{esc(note)}.</p>']
        for method, per_variant in maps.items():
            cells = []
            if img is not None:
                cells.append(_cell(_png(img.transpose(1, 2, 0) / 255.0), "input image",
                                   f"image {image_id}"))
            for variant, t in per_variant.items():
                hit = np.flatnonzero(t["image_ids"] == image_id)
                if not hit.size:
                    continue
                j = int(hit[0])
                pred = _name(names, int(t["targets"][j]))
                ok = "✓" if int(t["targets"][j]) == int(t["labels"][j]) else "✗"
                tag = f"{variant} (baseline)" if variant == base != "baseline" else variant
                cells.append(_cell(overlay_png(img, t["maps"][j]), f"{tag}: pred {pred} {ok}",
                                   f"{METHOD_NAMES.get(method, method)} of {variant}, "
                                   f"image {image_id}"))
            rows.append(f"<h4>{esc(METHOD_NAMES.get(method, method))}</h4>"
                        f'<div class="cam-row">{"".join(cells)}</div>')
        hidden = "" if n == 0 else " hidden"
        items.append(f'<div class="gallery-item" data-image="{image_id}"{hidden}>'
                     f'{"".join(rows)}</div>')
    controls = (
        '<div class="gallery-controls"><label for="gallery-select">Image</label>'
        f'<select id="gallery-select">{"".join(options)}</select>'
        '<button type="button" data-step="-1">◀ previous</button>'
        '<button type="button" data-step="1">next ▶</button></div>'
    )
    return f'<div class="gallery" id="gallery">{controls}{"".join(items)}</div>'


def _cell(png: bytes, caption: str, alt: str) -> str:
    return (f'<figure class="cam-cell">{img_html(png, alt)}'
            f"<figcaption>{esc(caption)}</figcaption></figure>")
