"""Synthetic glaucoma fundus photographs: the built-in demo data when the real data is absent.

The generated folder mimics the layout of the real glaucoma study::

    root/
      GENERATED_DEMO_DATA.txt         marker: says loudly that this is not patient data
      demo_geometry.csv               one row per image: label, cup-to-disc ratio, disc geometry
      .pool/<image_id>.jpg            every image, written once
      Fold0/{train,valid,test}/{normal,abnormal}/<image_id>.jpg   hard links into .pool
      ...
      Fold9/...

The label is carried only by the optic cup-to-disc ratio (CDR): normal eyes get a
small pale cup, abnormal ones a large one. Every other property (field of view,
illumination, disc position and size, vessels, macula, noise, blur, colour) is
drawn independently of the label, so a classifier has to look at the optic disc
to do better than chance. The sidecar CSV records where the disc and cup are, so
explanations can be checked against the ground truth: this module registers the
`optic_disc` explanation check (medxp.explanation_checks), which medxp.explain runs on
every explained image of this data: the share of positive weight inside the disc against
the disc's share of the image.

Generation is deterministic: the same seed and arguments give byte-identical files
(on the same Pillow/libjpeg build).

The folder handling every demo generator shares lives here too: `generate_demo_folder`
(refuse real data, reuse a matching generation, stage, write the marker, move into place)
and `is_generated` (the marker test behind the `data.synthetic` tag); the tabular CTG demo
(medxp.data.synthetic_tabular) uses them.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from medxp.errors import MedxpError
from medxp.explanation_checks import EXPLANATION_CHECKS, CheckResult, ExplainedImage, finite_mean

if TYPE_CHECKING:
    import pandas

GEOMETRY_FILE = "demo_geometry.csv"
MARKER_FILE = "GENERATED_DEMO_DATA.txt"
CLASS_NAMES = ("normal", "abnormal")

SPLIT_NAMES = ("train", "valid", "test")
POOL_DIR = ".pool"
# Bump when the pictures change, so an old folder is not mistaken for a current one.
GENERATOR_VERSION = 1
NORMAL_CDR_RANGE = (0.20, 0.45)
ABNORMAL_CDR_RANGE = (0.60, 0.85)
DISC_RADIUS_FRACTION = (0.09, 0.14)
JPEG_OPTIONS = {"format": "JPEG", "quality": 92, "subsampling": 0, "optimize": False, "progressive": False}
GEOMETRY_COLUMNS = (
    "image_id", "label", "class_name", "cdr", "disc_x", "disc_y", "disc_radius", "cup_radius", "image_size",
)
_MARKER_ARGUMENTS_PREFIX = "arguments: "
_FUNDUS_DESCRIPTION = (
    "The fundus images are drawn by medxp.data.synthetic.generate_fundus_demo; no person is in them.\n"
    "The label is carried only by the optic cup-to-disc ratio; see demo_geometry.csv.\n"
)
_SUPERSAMPLING = 2

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FundusGeometry:
    """Where the optic disc and cup of one generated image are, in pixels.

    x is the column and y the row of the image; pixel centres lie on integer coordinates.
    The cup is concentric with the disc.
    """

    image_id: str
    label: int
    cdr: float
    disc_x: float
    disc_y: float
    disc_radius: float
    cup_radius: float
    image_size: int

    def as_row(self) -> dict[str, object]:
        """Returns the sidecar CSV row of this image (floats rounded to 4 decimals)."""
        return {
            "image_id": self.image_id,
            "label": self.label,
            "class_name": CLASS_NAMES[self.label],
            "cdr": f"{self.cdr:.4f}",
            "disc_x": f"{self.disc_x:.4f}",
            "disc_y": f"{self.disc_y:.4f}",
            "disc_radius": f"{self.disc_radius:.4f}",
            "cup_radius": f"{self.cup_radius:.4f}",
            "image_size": self.image_size,
        }


# ----------------------------------------------------------------------------- public API


def generate_fundus_demo(
    root: Path, *, images_per_class: int = 400, folds: int = 10, image_size: int = 128, seed: int = 0
) -> Path:
    """Writes a synthetic glaucoma fundus data set in the layout of the real study.

    Writes root/Fold0..Fold{folds-1}/{train,valid,test}/{normal,abnormal}/<image_id>.jpg,
    the sidecar ``demo_geometry.csv`` and the ``GENERATED_DEMO_DATA.txt`` marker. In fold k
    the test split is the k-th stratified chunk of the shuffled pool, the valid split the
    next chunk and the train split the rest. Generation goes to a temporary sibling folder
    that is renamed into place at the end, so an interrupted run leaves no half-written root.

    Args:
        root: Folder to create. It may be absent or empty; a folder already generated
            with the same arguments is returned as it is.
        images_per_class: Number of images of each class in the pool.
        folds: Number of folds (at least 3: each needs a test, a valid and a train chunk).
        image_size: Width and height of the square images in pixels (at least 32).
        seed: Seed of every random choice; same seed and arguments give identical files.

    Returns:
        root.

    Raises:
        MedxpError: If an argument is out of range, root holds something that is not
            generated demo data, or root was generated with different arguments.
    """
    arguments = _generation_arguments(images_per_class, folds, image_size, seed)
    return generate_demo_folder(root, arguments, _write_data_set, contents="images", description=_FUNDUS_DESCRIPTION)


def generate_demo_folder(
    root: Path,
    arguments: dict[str, int],
    write: Callable[[Path, dict[str, int]], None],
    *,
    contents: str,
    description: str,
) -> Path:
    """Writes generated demo data into root safely, or reuses the same generation already there.

    The steps every demo generator shares: refuse a folder that may hold real data, return a
    folder generated with the same arguments as it is, log loudly, write into a temporary
    sibling folder, add the ``GENERATED_DEMO_DATA.txt`` marker last, and rename it into place
    (so an interrupted run leaves no half-written root).

    Args:
        root: Folder to create. It may be absent or empty.
        arguments: The generation arguments, recorded in the marker (integers only).
        write: Writes the data files into the (empty) staging folder it is given.
        contents: What the data is, for the log line ("images", "CTG exams").
        description: Lines of the marker saying what was generated and what carries the label.

    Returns:
        root.

    Raises:
        MedxpError: If root holds something that is not generated demo data, or root was
            generated with different arguments.
    """
    root = Path(root)
    if _existing_generation_matches(root, arguments):
        return root
    logger.warning(
        "generating SYNTHETIC demo data in %s (%s) - these are generated %s, not real patients",
        root,
        ", ".join(f"{key}={value}" for key, value in arguments.items()),
        contents,
    )
    root.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkdtemp: its 0700 mode would stay on root and lock out other users and containers.
    staging = root.parent / f".{root.name}.generating-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        write(staging, arguments)
        write_marker(staging, arguments, description)
        return _move_into_place(staging, root, arguments)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def is_generated(root: Path) -> bool:
    """Tells whether root holds medxp's generated demo data.

    Args:
        root: A data folder.

    Returns:
        True when the ``GENERATED_DEMO_DATA.txt`` marker exists in root.
    """
    return (Path(root) / MARKER_FILE).is_file()


def read_geometry(root: Path) -> "pandas.DataFrame":
    """Reads the sidecar that says where the optic disc and cup of every image are.

    Args:
        root: A folder written by generate_fundus_demo.

    Returns:
        One row per image id, columns image_id, label, class_name, cdr, disc_x, disc_y,
        disc_radius, cup_radius, image_size (coordinates in pixels of the generated image).

    Raises:
        MedxpError: If root has no sidecar.
    """
    import pandas  # imported here: only explanation checks need it

    path = Path(root) / GEOMETRY_FILE
    if not path.is_file():
        raise MedxpError(f"{path}: no demo geometry sidecar; was {root} written by generate_fundus_demo?")
    return pandas.read_csv(path, dtype={"image_id": str, "class_name": str})


# ----------------------------------------------------------------------------- the optic disc check


@EXPLANATION_CHECKS.register("optic_disc")
def optic_disc_check(data: Any, split: str, explained: Sequence[ExplainedImage]) -> CheckResult | None:
    """How much of each explanation's positive weight lies on the optic disc, where the label is drawn.

    Applies to generated fundus demo data with its geometry sidecar; other data gets None.
    A weight share well above the disc's area share means the model looks where it should.

    Args:
        data: The data module (reads `synthetic`, `root` and the split's `files`).
        split: The explained split, whose image ids (file stems) are looked up in the sidecar.
        explained: The explained images.

    Returns:
        Per image `disc_weight_share` and `disc_area_share`; as metrics their means over every
        measured image and method, and `disc_weight_share_<method>` per method (NaN shares,
        no positive weight, are left out of the means). None where the check does not apply.
    """
    if not data.synthetic or not (Path(data.root) / GEOMETRY_FILE).is_file():
        return None
    wanted = {path.stem for path, _ in data.files.get(split, [])}
    geometry = {str(row.image_id): row for row in read_geometry(data.root).itertuples(index=False)
                if str(row.image_id) in wanted}
    if not geometry:
        return None
    per_image, measured = [], []
    for image in explained:
        row = geometry.get(image.image_id)
        if row is None:
            per_image.append({})
            continue
        weight, area = disc_weight_share(image.heatmap, *_disc_circle(row, image.heatmap.shape[-1]))
        per_image.append({"disc_weight_share": weight, "disc_area_share": area})
        measured.append((image.method, weight, area))
    return CheckResult(_disc_metrics(measured), per_image)


def disc_weight_share(heatmap: np.ndarray, disc_x: float, disc_y: float, disc_radius: float) -> tuple[float, float]:
    """How much of the supporting evidence lies inside a circle (the optic disc).

    Pixel centres lie on integer coordinates; a pixel is inside when its centre is
    within `disc_radius` of (disc_x, disc_y).

    Args:
        heatmap: (H, W) weights of the explained image's pixels (or an object with a
            `heatmap`, such as a medxp.explain Explanation).
        disc_x: Column of the disc centre in pixels of the explained image.
        disc_y: Row of the disc centre.
        disc_radius: Disc radius in pixels.

    Returns:
        (share of the positive weight mass inside the disc, share of the image's pixels
        inside the disc). The first is NaN when no pixel has a positive weight. A share
        well above the area share means the explanation looks at the disc.

    Raises:
        MedxpError: the radius is not positive or the heat map is not 2-D.
    """
    heatmap = np.asarray(getattr(heatmap, "heatmap", heatmap), dtype=float)
    if heatmap.ndim != 2:
        raise MedxpError(f"disc_weight_share: heat map of shape {heatmap.shape}; expected (H, W)")
    if not disc_radius > 0:
        raise MedxpError(f"disc_weight_share: disc_radius = {disc_radius}; expected a positive radius in pixels")
    rows, columns = np.mgrid[0:heatmap.shape[0], 0:heatmap.shape[1]]
    inside = (columns - disc_x) ** 2 + (rows - disc_y) ** 2 <= disc_radius**2
    positive = np.clip(heatmap, 0.0, None)
    total = positive.sum()
    weight_share = float(positive[inside].sum() / total) if total > 0 else float("nan")
    return weight_share, float(inside.mean())


def _disc_circle(row: Any, image_size: int) -> tuple[float, float, float]:
    """(column, row, radius) of a sidecar row's disc in pixels of the image decoded at `image_size`.

    The sidecar's coordinates are in pixels of the generated image; they are rescaled the way
    the decoder resized it (pixel centres on integer coordinates).
    """
    scale = image_size / float(row.image_size)
    return (row.disc_x + 0.5) * scale - 0.5, (row.disc_y + 0.5) * scale - 0.5, row.disc_radius * scale


def _disc_metrics(measured: list[tuple[str, float, float]]) -> dict[str, float]:
    """Means of (method, weight share, area share) triples: overall, and the weight share per method."""
    metrics = {}
    for method in dict.fromkeys(method for method, _, _ in measured):
        share = finite_mean([weight for name, weight, _ in measured if name == method])
        if share is not None:
            metrics[f"disc_weight_share_{method}"] = share
    for name, values in (("disc_weight_share", [weight for _, weight, _ in measured]),
                         ("disc_area_share", [area for _, _, area in measured])):
        mean = finite_mean(values)
        if mean is not None:
            metrics[name] = mean
    return metrics


# ----------------------------------------------------------------------------- folder handling


def _generation_arguments(images_per_class: int, folds: int, image_size: int, seed: int) -> dict[str, int]:
    """Checks the arguments and returns them as the dict recorded in the marker."""
    if folds < 3:
        raise MedxpError(f"synthetic demo data: folds={folds}, expected at least 3 (test, valid, train chunks)")
    if images_per_class < folds:
        raise MedxpError(
            f"synthetic demo data: images_per_class={images_per_class}, expected at least folds={folds} "
            "so every split holds both classes"
        )
    if image_size < 32:
        raise MedxpError(f"synthetic demo data: image_size={image_size}, expected at least 32 pixels")
    return {
        "images_per_class": int(images_per_class),
        "folds": int(folds),
        "image_size": int(image_size),
        "seed": int(seed),
        "generator_version": GENERATOR_VERSION,
    }


def _existing_generation_matches(root: Path, arguments: dict[str, int]) -> bool:
    """Tells whether root already holds this generation; raises if root holds anything else."""
    if not root.exists():
        return False
    if not root.is_dir():
        raise MedxpError(f"{root}: exists and is not a folder; cannot write synthetic demo data there")
    if not is_generated(root):
        if any(root.iterdir()):
            raise MedxpError(
                f"{root}: folder is not empty and has no {MARKER_FILE} marker, so it may be real data; "
                "refusing to write synthetic demo data there. Use another data_dir."
            )
        return False
    recorded = _read_marker_arguments(root)
    if recorded != arguments:
        raise MedxpError(
            f"{root}: holds synthetic demo data generated with {recorded}, but {arguments} was asked for. "
            "Delete the folder to regenerate it, or use another data_dir."
        )
    logger.info("reusing SYNTHETIC demo data in %s (not real patients)", root)
    return True


def _read_marker_arguments(root: Path) -> dict[str, int]:
    """Returns the generation arguments recorded in root's marker file."""
    marker = root / MARKER_FILE
    for line in marker.read_text(encoding="utf-8").splitlines():
        if line.startswith(_MARKER_ARGUMENTS_PREFIX):
            try:
                return json.loads(line[len(_MARKER_ARGUMENTS_PREFIX) :])
            except json.JSONDecodeError:
                break
    raise MedxpError(
        f"{marker}: expected a line '{_MARKER_ARGUMENTS_PREFIX}{{...json...}}'; "
        f"delete {root} to regenerate it, or use another data_dir"
    )


def _move_into_place(staging: Path, root: Path, arguments: dict[str, int]) -> Path:
    """Renames the finished staging folder to root; accepts a concurrent identical generation."""
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()
    try:
        staging.rename(root)
    except OSError:
        # Another process (say a parallel trial) finished first: fine if it made the same data.
        if not _existing_generation_matches(root, arguments):
            raise MedxpError(f"{root}: could not move the demo data generated in {staging} there") from None
    return root


def write_marker(root: Path, arguments: dict[str, int], description: str) -> None:
    """Writes the marker that says loudly that the folder is generated demo data.

    Args:
        root: The generated folder.
        arguments: The generation arguments; a later generation reuses root only if they match.
        description: Lines saying what was generated and what carries the label.
    """
    text = (
        "THIS FOLDER HOLDS SYNTHETIC DEMO DATA GENERATED BY medxp - NOT REAL PATIENTS.\n"
        f"{description.rstrip()}\n"
        "Never report results on this data as clinical results.\n"
        f"{_MARKER_ARGUMENTS_PREFIX}{json.dumps(arguments, sort_keys=True)}\n"
    )
    (root / MARKER_FILE).write_text(text, encoding="utf-8")


# ----------------------------------------------------------------------------- data set writing


def _write_data_set(root: Path, arguments: dict[str, int]) -> None:
    """Writes pool, folds and sidecar into the empty folder root (generate_demo_folder adds the marker)."""
    images_per_class, folds = arguments["images_per_class"], arguments["folds"]
    image_size, seed = arguments["image_size"], arguments["seed"]
    seeds = np.random.SeedSequence(seed).spawn(2 * images_per_class + 1)
    layout_rng = np.random.default_rng(seeds[0])
    labels = layout_rng.permutation(np.repeat(np.arange(len(CLASS_NAMES)), images_per_class))
    image_ids = [f"fundus_{index:05d}" for index in range(len(labels))]
    geometries = _write_pool(root / POOL_DIR, image_ids, labels, seeds[1:], image_size)
    test_chunks = _stratified_chunks(labels, folds, layout_rng)
    _link_folds(root, image_ids, labels, test_chunks)
    _write_geometry(root / GEOMETRY_FILE, geometries)


def _write_pool(
    pool: Path, image_ids: list[str], labels: np.ndarray, seeds: list[np.random.SeedSequence], image_size: int
) -> list[FundusGeometry]:
    """Draws and saves every image once; returns their geometry in image id order."""
    pool.mkdir(parents=True)
    grid = _PixelGrid.of_size(image_size)
    geometries = []
    for image_id, label, image_seed in zip(image_ids, labels, seeds):
        rng = np.random.default_rng(image_seed)
        geometry = _sample_geometry(rng, image_id, int(label), image_size)
        pixels = _render_fundus(rng, geometry, grid)
        Image.fromarray(pixels).save(pool / f"{image_id}.jpg", **JPEG_OPTIONS)
        geometries.append(geometry)
    return geometries


def _stratified_chunks(labels: np.ndarray, folds: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Splits the pool indices into `folds` chunks, each with the class balance of the pool."""
    per_class = [
        np.array_split(rng.permutation(np.flatnonzero(labels == label)), folds) for label in np.unique(labels)
    ]
    return [np.sort(np.concatenate([chunks[fold] for chunks in per_class])) for fold in range(folds)]


def _link_folds(root: Path, image_ids: list[str], labels: np.ndarray, chunks: list[np.ndarray]) -> None:
    """Hard-links every pool image into its split of every fold (fold k: test chunk k, valid chunk k+1)."""
    folds = len(chunks)
    for fold in range(folds):
        for split in SPLIT_NAMES:
            for class_name in CLASS_NAMES:
                (root / f"Fold{fold}" / split / class_name).mkdir(parents=True)
        test, valid = set(chunks[fold].tolist()), set(chunks[(fold + 1) % folds].tolist())
        for index, image_id in enumerate(image_ids):
            split = "test" if index in test else "valid" if index in valid else "train"
            target = root / f"Fold{fold}" / split / CLASS_NAMES[labels[index]] / f"{image_id}.jpg"
            _link_or_copy(root / POOL_DIR / f"{image_id}.jpg", target)


def _link_or_copy(source: Path, target: Path) -> None:
    """Hard-links source to target, copying where the file system cannot link."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _write_geometry(path: Path, geometries: list[FundusGeometry]) -> None:
    """Writes the sidecar CSV, one row per image, sorted by image id."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=GEOMETRY_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for geometry in sorted(geometries, key=lambda item: item.image_id):
            writer.writerow(geometry.as_row())


# ----------------------------------------------------------------------------- image drawing


@dataclass(frozen=True)
class _PixelGrid:
    """Pixel coordinates of a square image, computed once per size."""

    size: int
    x: np.ndarray
    y: np.ndarray

    @classmethod
    def of_size(cls, size: int) -> "_PixelGrid":
        """Returns the grid of a size x size image."""
        y, x = np.mgrid[0:size, 0:size].astype(np.float32)
        return cls(size=size, x=x, y=y)

    def distance_to(self, centre_x: float, centre_y: float) -> np.ndarray:
        """Returns every pixel's distance to a point, in pixels."""
        return np.hypot(self.x - centre_x, self.y - centre_y)


def _sample_geometry(rng: np.random.Generator, image_id: str, label: int, size: int) -> FundusGeometry:
    """Draws the disc position and size (label-independent) and the CDR (from the label)."""
    side = rng.choice([-1.0, 1.0])  # left or right eye: disc on the nasal side of the field
    disc_x = size / 2 + side * rng.uniform(0.12, 0.22) * size
    disc_y = size / 2 + rng.uniform(-0.08, 0.08) * size
    disc_radius = rng.uniform(*DISC_RADIUS_FRACTION) * size
    cdr = rng.uniform(*(ABNORMAL_CDR_RANGE if label else NORMAL_CDR_RANGE))
    return FundusGeometry(
        image_id=image_id,
        label=label,
        cdr=float(cdr),
        disc_x=float(disc_x),
        disc_y=float(disc_y),
        disc_radius=float(disc_radius),
        cup_radius=float(cdr * disc_radius),
        image_size=size,
    )


def _render_fundus(rng: np.random.Generator, geometry: FundusGeometry, grid: _PixelGrid) -> np.ndarray:
    """Draws one fundus photograph; returns it as an HxWx3 uint8 array."""
    image = _retina_background(rng, grid)
    _paint_disc_and_cup(image, rng, geometry, grid)
    _paint_vessels(image, rng, geometry, grid)
    _darken_macula(image, rng, geometry, grid)
    image *= _illumination(rng, grid)[..., None]
    image = _camera_effects(image, rng, grid.size)
    image *= _field_of_view(rng, grid)[..., None]
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def _random_colour(
    rng: np.random.Generator, red: tuple[float, float], green: tuple[float, float], blue: tuple[float, float]
) -> np.ndarray:
    """Returns an RGB colour in [0, 1] with each channel drawn uniformly from its range."""
    return np.array([rng.uniform(*red), rng.uniform(*green), rng.uniform(*blue)], np.float32)


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Returns a low-frequency random field with zero mean and unit standard deviation."""
    white_noise = rng.standard_normal((size, size)).astype(np.float32)
    field = ndimage.gaussian_filter(white_noise, sigma, mode="reflect")
    return (field - field.mean()) / (field.std() + 1e-6)


def _retina_background(rng: np.random.Generator, grid: _PixelGrid) -> np.ndarray:
    """Returns the mottled orange-red retina as an HxWx3 float array in [0, 1]."""
    base = _random_colour(rng, (0.60, 0.76), (0.22, 0.31), (0.07, 0.13))
    blotches = 0.07 * _smooth_noise(rng, grid.size, grid.size / 18)
    grain = 0.03 * _smooth_noise(rng, grid.size, grid.size / 90)
    return base * (1.0 + blotches + grain)[..., None]


def _soft_disk(distance: np.ndarray, radius: float, edge_width: float) -> np.ndarray:
    """Returns a disk of the given radius whose edge fades over about edge_width pixels."""
    # Clipped so far-away pixels do not overflow exp.
    return 1.0 / (1.0 + np.exp(np.clip((distance - radius) / max(edge_width, 1e-3), -40.0, 40.0)))


def _blend(image: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> None:
    """Blends a colour into image in place, weighted per pixel by alpha."""
    image += alpha[..., None] * (colour - image)


def _paint_disc_and_cup(
    image: np.ndarray, rng: np.random.Generator, geometry: FundusGeometry, grid: _PixelGrid
) -> None:
    """Paints the yellowish optic disc and the paler cup inside it."""
    distance = grid.distance_to(geometry.disc_x, geometry.disc_y)
    disc_colour = _random_colour(rng, (0.88, 0.96), (0.54, 0.62), (0.30, 0.38))
    disc_alpha = _soft_disk(distance, geometry.disc_radius, 0.04 * geometry.disc_radius + 0.3)
    _blend(image, disc_colour, disc_alpha * rng.uniform(0.85, 0.95))
    cup_colour = _random_colour(rng, (0.97, 1.0), (0.90, 0.96), (0.76, 0.86))
    cup_alpha = _soft_disk(distance, geometry.cup_radius, 0.05 * geometry.disc_radius + 0.3)
    _blend(image, cup_colour, cup_alpha * rng.uniform(0.88, 0.97))


def _paint_vessels(
    image: np.ndarray, rng: np.random.Generator, geometry: FundusGeometry, grid: _PixelGrid
) -> None:
    """Paints dark-red branching vessels that leave the disc and arc around the macula."""
    mask = Image.new("L", (grid.size * _SUPERSAMPLING,) * 2, 0)
    draw = ImageDraw.Draw(mask)
    for path in _vessel_paths(rng, geometry):
        _draw_tapered_path(draw, path)
    coverage = np.asarray(mask.resize((grid.size, grid.size), Image.Resampling.BOX), np.float32) / 255.0
    coverage = ndimage.gaussian_filter(coverage, 0.35 * grid.size / 128)
    coverage *= _vessel_visibility(grid.distance_to(geometry.disc_x, geometry.disc_y), geometry.disc_radius)
    colour = _random_colour(rng, (0.40, 0.52), (0.08, 0.14), (0.05, 0.10))
    _blend(image, colour, coverage * rng.uniform(0.55, 0.8))


def _vessel_visibility(distance_to_disc: np.ndarray, disc_radius: float) -> np.ndarray:
    """Returns how visible vessels are: faint where they dive into the middle of the disc.

    Depends on the disc radius only, never on the cup, so vessels carry no label information;
    it keeps them from hiding the small pale cups of normal eyes.
    """
    ramp = np.clip((distance_to_disc / disc_radius - 0.2) / 0.5, 0.0, 1.0)
    return 0.25 + 0.75 * ramp * ramp * (3.0 - 2.0 * ramp)


@dataclass(frozen=True)
class _VesselPath:
    """A vessel centre line in pixels with the width at each point."""

    points: np.ndarray  # shape (n, 2): x, y
    widths: np.ndarray  # shape (n,)


def _vessel_paths(rng: np.random.Generator, geometry: FundusGeometry) -> list[_VesselPath]:
    """Returns the main arcades, a few nasal vessels and their branches."""
    size, start = geometry.image_size, np.array([geometry.disc_x, geometry.disc_y])
    temporal = -1.0 if geometry.disc_x > size / 2 else 1.0  # towards the macula
    upwards, downwards = -np.pi / 2, np.pi / 2  # image rows grow downwards
    # (start angle, turn per step, length and start width as fractions of the image size);
    # the two arcades leave the disc up and down and bend round the macula.
    trunks = [
        (upwards + temporal * rng.uniform(0.1, 0.5), temporal * rng.uniform(0.05, 0.09), 0.75, 0.02),
        (downwards - temporal * rng.uniform(0.1, 0.5), -temporal * rng.uniform(0.05, 0.09), 0.75, 0.02),
    ]
    nasal = np.pi if temporal > 0 else 0.0
    for _ in range(rng.integers(2, 4)):
        trunks.append((nasal + rng.uniform(-1.1, 1.1), rng.uniform(-0.04, 0.04), 0.35, 0.014))
    paths = []
    for angle, turn, length, width in trunks:
        trunk = _random_walk(rng, start, angle, turn, length * size, width * size)
        paths.append(trunk)
        paths.extend(_branches(rng, trunk, size))
    return paths


def _random_walk(
    rng: np.random.Generator, start: np.ndarray, angle: float, turn: float, length: float, width: float
) -> _VesselPath:
    """Returns a wiggly curve of the given length that turns by about `turn` radians per step."""
    steps = 24
    angles = angle + np.cumsum(turn + rng.normal(0.0, 0.08, steps))
    offsets = np.cumsum(np.stack([np.cos(angles), np.sin(angles)], axis=1) * (length / steps), axis=0)
    points = np.vstack([start, start + offsets])
    widths = width * np.linspace(1.0, 0.35, steps + 1)
    return _VesselPath(points=points, widths=widths)


def _branches(rng: np.random.Generator, trunk: _VesselPath, size: int) -> list[_VesselPath]:
    """Returns one to three thinner vessels leaving the trunk at random points."""
    branches = []
    for _ in range(rng.integers(1, 4)):
        at = int(rng.integers(5, len(trunk.points) - 6))
        heading = trunk.points[at + 1] - trunk.points[at]
        angle = np.arctan2(heading[1], heading[0]) + rng.choice([-1.0, 1.0]) * rng.uniform(0.4, 0.9)
        length = rng.uniform(0.12, 0.3) * size
        turn = rng.uniform(-0.06, 0.06)
        branches.append(_random_walk(rng, trunk.points[at], angle, turn, length, 0.7 * trunk.widths[at]))
    return branches


def _draw_tapered_path(draw: ImageDraw.ImageDraw, path: _VesselPath) -> None:
    """Draws a path on the supersampled mask as runs of equal width, so the vessel tapers."""
    points = path.points * _SUPERSAMPLING
    widths = np.maximum(1, np.rint(path.widths[:-1] * _SUPERSAMPLING)).astype(int)
    run_starts = np.flatnonzero(np.r_[True, widths[1:] != widths[:-1]])
    run_ends = np.r_[run_starts[1:], len(widths)]
    for start, end in zip(run_starts, run_ends):
        width = int(widths[start])
        draw.line([tuple(point) for point in points[start : end + 1]], fill=255, width=width, joint="curve")
        radius = width / 2  # round cap where the width steps down, so the vessel has no gap
        x, y = points[end]
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=255)


def _darken_macula(
    image: np.ndarray, rng: np.random.Generator, geometry: FundusGeometry, grid: _PixelGrid
) -> None:
    """Darkens a soft spot temporal of the disc, near the middle of the field (the macula)."""
    temporal = -1.0 if geometry.disc_x > grid.size / 2 else 1.0
    macula_x = geometry.disc_x + temporal * rng.uniform(0.26, 0.32) * grid.size
    macula_y = geometry.disc_y + rng.uniform(-0.04, 0.06) * grid.size
    sigma = rng.uniform(0.05, 0.08) * grid.size
    spot = np.exp(-grid.distance_to(macula_x, macula_y) ** 2 / (2 * sigma**2))
    image *= (1.0 - rng.uniform(0.2, 0.4) * spot)[..., None]


def _illumination(rng: np.random.Generator, grid: _PixelGrid) -> np.ndarray:
    """Returns an uneven illumination field: a linear gradient in a random direction and vignetting."""
    centre = (grid.size - 1) / 2
    direction = rng.uniform(0, 2 * np.pi)
    along = ((grid.x - centre) * np.cos(direction) + (grid.y - centre) * np.sin(direction)) / centre
    radial = grid.distance_to(centre, centre) / centre
    return (1.0 + rng.uniform(0.0, 0.25) * along) * (1.0 - rng.uniform(0.1, 0.35) * radial**2)


def _camera_effects(image: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """Applies colour cast, brightness, contrast, blur and sensor noise."""
    image = image * rng.uniform(0.9, 1.1, 3).astype(np.float32) * rng.uniform(0.88, 1.12)
    mean = image.mean(axis=(0, 1), keepdims=True)
    image = mean + (image - mean) * rng.uniform(0.85, 1.15)
    blur = rng.uniform(0.3, 0.8) * size / 128
    image = ndimage.gaussian_filter(image, (blur, blur, 0))
    return image + rng.normal(0.0, rng.uniform(0.005, 0.025), image.shape).astype(np.float32)


def _field_of_view(rng: np.random.Generator, grid: _PixelGrid) -> np.ndarray:
    """Returns the circular camera aperture: 1 inside, 0 (black) outside, with a soft rim."""
    centre = (grid.size - 1) / 2 + rng.uniform(-0.01, 0.01, 2) * grid.size
    radius = rng.uniform(0.46, 0.49) * grid.size
    return _soft_disk(grid.distance_to(*centre), radius, 0.6).astype(np.float32)
