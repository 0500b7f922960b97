"""``flowclas prepare-coco``: COCO train2017 -> outlier sources the Meta-OoD way (docs/method.md section 3).

Images that contain a class of the inlier domain are dropped (by category name), as are
images under ``--min-side`` (480) pixels on a side and images without any annotated object.
For every kept image, ``OUTPUT/train2017/<file>`` links to (or copies) the image and
``OUTPUT/ood_seg_train2017/<stem>.png`` holds its mask: 254 on every annotated object
pixel, 0 elsewhere. ``build_dataset("coco", OUTPUT, "outliers")`` reads the result.

Masks are rasterised here, not with pycocotools: that package is not a dependency (it
needs a C compiler at install time), and the two annotation forms COCO uses are short to
decode - polygons are filled with ``PIL.ImageDraw`` and run-length encodings (the plain
count list of crowd annotations and the compressed count string) are expanded with numpy.
Polygon edges can differ from pycocotools' rasteriser by a pixel, which does not matter
for pasting.

The annotations are read with ``flowclas_ros.structured.read_json`` (bounded nesting, at
most ``MAX_ANNOTATION_BYTES``). A malformed image entry (not a mapping, a file name that is
not a plain name, a size that is not integers within ``flowclas_ros.vocabulary.MAX_SIDE`` and
``MAX_FILE_PIXELS``, so nothing is allocated for a claimed 10^9 x 10^9 image) drops that image;
a malformed annotation (no image id, polygons or RLE that do not decode) is left out; an
image whose annotations would rasterise more than ``MAX_MASK_WORK`` pixels is dropped. Each
kind is counted and its first case logged as a warning; the rest of the set is prepared.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import Counter
from pathlib import Path

from flowclas_ros.errors import UserError
from flowclas_ros.files import claim_folder
from flowclas_ros.images import check_size, write_png
from flowclas_ros.structured import read_json
from flowclas_ros.vocabulary import Label

log = logging.getLogger(__name__)

CITYSCAPES_CLASSES = ("person", "bicycle", "car", "motorcycle", "bus", "truck", "traffic light", "stop sign")
ALLO_EXTRA_CLASSES = ("microwave", "oven", "toaster", "refrigerator", "scissors", "hair drier")
FILTERS = {"cityscapes": CITYSCAPES_CLASSES, "allo": CITYSCAPES_CLASSES + ALLO_EXTRA_CLASSES}
MIN_SIDE = 480
OBJECT = int(Label.OBJECT)
MAX_ANNOTATION_BYTES = 2 * 2**30  # instances_train2017.json is about 450 MB
MAX_RLE_GROUPS = 13  # 5-bit groups per compressed RLE value: 65 bits, far beyond any image
MAX_COORDINATE = 1e6  # polygon coordinates beyond this are garbage, not a COCO image
MAX_MASK_WORK = 2**32  # annotations x pixels rasterised per image: a few seconds (COCO needs < 2**26)
BAD_ANNOTATION = "malformed annotations (left out)"
BAD_IMAGE = "malformed image entries"


# --- rasterising annotations ------------------------------------------------------------------


def rle_counts(counts: str) -> list[int]:
    """The run lengths of COCO's compressed RLE string.

    Each value is written in 5-bit groups, least significant first, as characters offset by
    48; bit 0x20 says another group follows, bit 0x10 of the last group is the sign. From
    the third value on, each value is stored as the difference to the value two before.
    """
    values: list[int] = []
    pos = 0
    while pos < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if pos >= len(counts):
                raise ValueError("RLE string ends inside a value")
            if shift >= 5 * MAX_RLE_GROUPS:
                raise ValueError(f"an RLE value runs over {MAX_RLE_GROUPS} characters")
            group = ord(counts[pos]) - 48
            if not 0 <= group < 64:
                raise ValueError(f"character {counts[pos]!r} is not valid in an RLE string")
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            pos += 1
            shift += 5
            if not more and group & 0x10:
                value -= 1 << shift
        if len(values) > 2:
            value += values[-2]
        values.append(value)
    return values


def rle_mask(rle: dict, height: int, width: int):
    """A boolean ``height x width`` mask from a COCO RLE dict (``size``, ``counts`` list or string)."""
    import numpy as np

    if rle.get("size") != [height, width]:
        raise ValueError(f"RLE size {str(rle.get('size'))[:40]} differs from the image's {[height, width]}")
    counts = rle.get("counts")
    runs = rle_counts(counts) if isinstance(counts, str) else counts
    if not isinstance(runs, list) or not all(isinstance(r, int) and r >= 0 for r in runs):
        raise ValueError("RLE counts must be a string or a list of non-negative integers (runs)")
    if sum(runs) != height * width:
        raise ValueError(f"RLE runs cover {sum(runs)} pixels, the image has {height * width}")
    values = np.arange(len(runs)) % 2 == 1  # runs alternate 0, 1, 0, ... starting with 0
    flat = np.repeat(values, runs)
    return flat.reshape(width, height).T  # column-major order


def polygon_mask(polygons: list, height: int, width: int):
    """A boolean mask with every polygon (flat ``[x1, y1, x2, y2, ...]`` lists) filled."""
    import numpy as np
    from PIL import Image, ImageDraw

    canvas = Image.new("1", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for poly in polygons:
        if not isinstance(poly, list) or len(poly) % 2 or not all(_coordinate(v) for v in poly):
            raise ValueError(f"a polygon must be a flat list of x, y coordinates within +-{MAX_COORDINATE:g}")
        if len(poly) >= 6:
            draw.polygon([(float(x), float(y)) for x, y in zip(poly[::2], poly[1::2])], fill=1, outline=1)
    return np.asarray(canvas, dtype=bool)


def _coordinate(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and abs(value) <= MAX_COORDINATE


def annotation_mask(segmentation, height: int, width: int):
    """The object pixels of one annotation's ``segmentation`` (polygons or RLE)."""
    if isinstance(segmentation, list):
        return polygon_mask(segmentation, height, width)
    if isinstance(segmentation, dict):
        return rle_mask(segmentation, height, width)
    raise ValueError(f"segmentation is a {type(segmentation).__name__}, expected polygons or RLE")


# --- selecting images -------------------------------------------------------------------------


def load_instances(path: Path) -> dict:
    """The instances JSON (bounded: ``structured.read_json``), checked for the lists used here."""
    data = read_json(path, MAX_ANNOTATION_BYTES)
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
        raise UserError(f"{path} is not a COCO instances file (needs lists 'images', 'annotations', 'categories')")
    return data


def _count(dropped: Counter, reason: str, detail: str) -> None:
    """Count one dropped image or annotation; the first of each reason is logged."""
    if not dropped[reason]:
        log.warning("%s: %s (further ones are only counted)", reason, detail)
    dropped[reason] += 1


def _is_key(value) -> bool:
    """Whether ``value`` can be an id (an integer or a string)."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def image_problem(image) -> str | None:
    """Why an ``images`` entry cannot be used (a sentence), or None when it can."""
    if not isinstance(image, dict):
        return f"image entry is a {type(image).__name__}, not a mapping"
    file_name, height, width = image.get("file_name"), image.get("height"), image.get("width")
    if not isinstance(file_name, str) or Path(file_name).name != file_name or file_name in ("", ".", "..") \
            or "\0" in file_name:
        return f"image file_name {str(file_name)[:80]!r} is not a plain file name"
    if not _is_key(image.get("id")):
        return f"image {file_name} has no integer or string id"
    if not (isinstance(height, int) and isinstance(width, int)) or isinstance(height, bool) or isinstance(width, bool):
        return f"image {file_name}: height and width must be integers, got {str(height)[:20]}, {str(width)[:20]}"
    try:
        check_size(width, height, f"image {file_name}")
    except UserError as exc:
        return str(exc)
    return None


def select_images(data: dict, excluded: tuple[str, ...], min_side: int) -> tuple[list[tuple[dict, list[dict]]], Counter]:
    """Images to keep with their annotations, and counts of why the others (and malformed
    annotations, under ``BAD_ANNOTATION``) were dropped."""
    names = {c.get("name"): c.get("id") for c in data["categories"]
             if isinstance(c, dict) and isinstance(c.get("name"), str) and _is_key(c.get("id"))}
    unknown = [n for n in excluded if n not in names]
    if unknown:
        raise UserError(f"the annotations have no categories named {', '.join(unknown)}: is this COCO instances_train2017.json?")
    excluded_ids = {names[n] for n in excluded}
    dropped: Counter = Counter()
    annotations: dict[int | str, list[dict]] = {}
    for ann in data["annotations"]:
        if not isinstance(ann, dict) or not _is_key(ann.get("image_id")) or "segmentation" not in ann \
                or not (ann.get("category_id") is None or _is_key(ann.get("category_id"))):
            _count(dropped, BAD_ANNOTATION, f"{str(ann)[:80]} lacks an image_id, a category_id or a segmentation")
            continue
        annotations.setdefault(ann["image_id"], []).append(ann)
    kept = []
    for image in data["images"]:
        problem = image_problem(image)
        if problem is not None:
            _count(dropped, BAD_IMAGE, problem)
            continue
        anns = annotations.get(image["id"], [])
        if any(a.get("category_id") in excluded_ids for a in anns):
            dropped["filtered classes"] += 1
        elif min(image["height"], image["width"]) < min_side:
            dropped[f"smaller than {min_side} px"] += 1
        elif not anns:
            dropped["no objects"] += 1
        elif len(anns) * image["height"] * image["width"] > MAX_MASK_WORK:
            _count(dropped, "too many annotations for their size",
                   f"image {image['file_name']}: {len(anns)} annotations of {image['width']}x{image['height']} pixels")
        else:
            kept.append((image, anns))
    return kept, dropped


# --- writing ----------------------------------------------------------------------------------


def write_outlier(image: dict, anns: list[dict], source: Path, output: Path, copy: bool, dropped: Counter) -> bool:
    """Link/copy one image and write its 254/0 mask; False when nothing was written, counted in
    ``dropped``: no object pixels, or a file that is neither a link nor a copy of the image
    already in its place (it is kept). Annotations that do not decode are left out and counted there too."""
    import filecmp
    import shutil

    import numpy as np
    from PIL import Image

    height, width = image["height"], image["width"]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a header only: sizes are compared, nothing decoded
            with Image.open(source) as header:
                size = header.size
    except Exception as exc:  # Pillow raises many kinds for files that are not images
        _count(dropped, "unreadable image file", f"{source}: {type(exc).__name__}")
        return False
    if size != (width, height):
        _count(dropped, "image size differs from its annotations",
               f"{source} is {size[0]}x{size[1]}, the annotations say {width}x{height}")
        return False
    objects = np.zeros((height, width), dtype=bool)
    for ann in anns:
        try:
            objects |= annotation_mask(ann["segmentation"], height, width)
        except ValueError as exc:
            _count(dropped, BAD_ANNOTATION, f"annotation {str(ann.get('id'))[:20]} of {image['file_name']}: {exc}")
    if not objects.any():
        dropped["no objects"] += 1
        return False
    target = output / "train2017" / image["file_name"]
    if target.is_symlink():
        target.unlink()  # a link (as this command writes): removing it loses nothing
    elif target.exists() and not (target.is_file() and filecmp.cmp(source, target, shallow=False)):
        _count(dropped, "existing files kept", f"{target} exists and is not a link: left as it is, not prepared")
        return False
    if not target.exists():  # else a copy of the image already, from an earlier --copy run
        if copy:
            shutil.copyfile(source, target)
        else:
            target.symlink_to(source.resolve())
    mask = np.where(objects, OBJECT, 0).astype(np.uint8)
    write_png(output / "ood_seg_train2017" / f"{Path(image['file_name']).stem}.png", mask)
    return True


def prepare_coco(coco_root: Path, output: Path, filter_name: str, annotations: Path | None = None,
                 min_side: int = MIN_SIDE, copy: bool = False) -> tuple[int, Counter]:
    """Write the prepared outlier set; returns the number kept and the counts of dropped images
    (and of malformed annotations, under ``BAD_ANNOTATION``) by reason."""
    from tqdm import tqdm

    images_dir = coco_root / "train2017"
    if not images_dir.is_dir():
        raise UserError(f"missing folder {images_dir} (expected COCO_ROOT/train2017/*.jpg)")
    annotations = annotations or coco_root / "annotations" / "instances_train2017.json"
    if not annotations.is_file():
        raise UserError(f"missing annotations {annotations} (expected COCO_ROOT/annotations/instances_train2017.json)")
    if min_side < 1:
        raise UserError(f"--min-side must be >= 1, got {min_side}")
    if (output / "train2017").resolve() == images_dir.resolve():
        raise UserError(f"--output {output} would write into the COCO images {images_dir}: choose another folder")
    candidates, dropped = select_images(load_instances(annotations), FILTERS[filter_name], min_side)
    claim_folder(output, ".flowclas-coco")
    (output / "train2017").mkdir(parents=True, exist_ok=True)
    (output / "ood_seg_train2017").mkdir(parents=True, exist_ok=True)
    kept, stems = 0, set()
    for image, anns in tqdm(candidates, desc="prepare-coco", unit="img"):
        source = images_dir / image["file_name"]
        stem = Path(image["file_name"]).stem
        if not source.is_file():
            _count(dropped, "missing image file", str(source))
        elif stem in stems:  # masks are named by stem: a second a.png beside a.jpg would replace its mask
            _count(dropped, "file name stem seen before", f"{image['file_name']}: another image has the stem {stem!r}")
        elif write_outlier(image, anns, source, output, copy, dropped):
            kept += 1
            stems.add(stem)
    return kept, dropped
