"""`medxp download <project>`: fetch a project's data from its publisher into the layout medxp reads.

- MedMNIST flags (`dataset.layout: medmnist`): through the `medmnist` package when it is
  installed, else from the npz URLs it documents (Zenodo), with urllib.
- Kaggle data sets (`dataset.source_id: owner/name`): through the `kaggle` command-line
  tool, which needs the user's API token (`~/.kaggle/kaggle.json`, or `KAGGLE_USERNAME` and
  `KAGGLE_KEY`). The archive is unpacked and the folder holding the layout is moved into place
  (for a CSV project, fetal_health, the folder holding `<dataset>.csv`). Without the tool or a
  token the error names the data set's page and where to put the data by hand.

Nothing is downloaded during tests: they call the placement steps on local files.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from medxp.config import ExperimentConfig, load_project, resolve_data_dir
from medxp.data.medmnist import SIZES, array_shapes
from medxp.data.sources import TABLE_LAYOUTS, normalise_name
from medxp.errors import MedxpError

log = logging.getLogger(__name__)

# MedMNIST+ (v3) on Zenodo: `<flag>.npz` is 28 px, `<flag>_<size>.npz` the larger sizes.
MEDMNIST_URL = "https://zenodo.org/records/10519652/files/{file_name}?download=1"
KAGGLE_URL = "https://www.kaggle.com/datasets/{slug}"


def download_project(name: str, target: str | Path | None = None, *, force: bool = False) -> Path:
    """Downloads a project's data set to `target` (default: the project's data folder).

    Args:
        name: A project under projects/ (e.g. `pneumoniamnist`, `chest_xray_pneumonia`).
        target: Folder to fill; default `data.data_dir`, else `$MEDXP_DATA_DIR/<name>`, else `./data/<name>`.
        force: Replace data already there.

    Returns:
        The folder (or, for MedMNIST, the npz file) medxp will read.

    Raises:
        MedxpError: no download source for the project, missing credentials or tool, or a
            download that does not hold the expected layout.
    """
    config = load_project(name)
    target = Path(target).expanduser() if target else resolve_data_dir(config)
    if config.dataset.layout == "medmnist":
        return download_medmnist(config.dataset.source_id or name, config.dataset.image_size, target, force=force)
    if "/" in config.dataset.source_id:
        return download_kaggle(config.dataset.source_id, target, config, force=force)
    raise MedxpError(f"projects/{name}/project.yaml: 'dataset.source_id' = {config.dataset.source_id!r}: expected a "
                     f"MedMNIST flag or a Kaggle slug (owner/name) to download; see projects/{name}/README.md")


# ----------------------------------------------------------------------------- MedMNIST


def medmnist_file_name(flag: str, image_size: int) -> str:
    """`pneumoniamnist.npz` for 28 px, `pneumoniamnist_64.npz` for 64, 128 or 224."""
    size = image_size if image_size in SIZES else 28
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def download_medmnist(flag: str, image_size: int, target: Path, *, force: bool = False) -> Path:
    """Fetches one MedMNIST flag's npz into the folder `target`; returns the file."""
    destination = target / medmnist_file_name(flag, image_size)
    if destination.is_file() and not force:
        log.info("%s exists; not downloading (force=True replaces it)", destination)
        return destination
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target) as staging:
        downloaded = _fetch_medmnist(flag, image_size, Path(staging))
        return place_npz(downloaded, destination)


def _fetch_medmnist(flag: str, image_size: int, folder: Path) -> Path:
    """The npz in `folder`, fetched by the medmnist package (checks its MD5) or from the documented URL."""
    file_name = medmnist_file_name(flag, image_size)
    try:
        import medmnist
    except ImportError:
        url = MEDMNIST_URL.format(file_name=file_name)
        log.info("downloading %s (the medmnist package is not installed)", url)
        try:
            urllib.request.urlretrieve(url, folder / file_name)
        except OSError as error:
            raise MedxpError(f"{url}: download failed ({error}); expected network access to zenodo.org") from None
        return folder / file_name
    if flag not in medmnist.INFO:
        raise MedxpError(f"dataset.source_id = {flag!r}: not a MedMNIST flag; expected one of "
                         f"{', '.join(sorted(medmnist.INFO))}")
    data_class = getattr(medmnist, medmnist.INFO[flag]["python_class"])
    size_argument = {"size": image_size} if image_size != 28 else {}
    data_class(split="test", download=True, root=str(folder), **size_argument)
    return folder / file_name


def place_npz(downloaded: Path, destination: Path) -> Path:
    """Checks the npz holds MedMNIST's arrays, then moves it to `destination` atomically."""
    array_shapes(downloaded)  # raises, naming the file and the missing keys
    os.replace(downloaded, destination)
    log.info("MedMNIST data in %s", destination)
    return destination


# ----------------------------------------------------------------------------- Kaggle


def download_kaggle(slug: str, target: Path, config: ExperimentConfig, *, force: bool = False) -> Path:
    """Downloads a Kaggle data set with the `kaggle` tool and unpacks its layout into `target`."""
    if target.exists() and (target.is_file() or any(target.iterdir())) and not force:
        log.info("%s is not empty; not downloading (force=True replaces it)", target)
        return target
    manual = manual_download_hint(slug, target, config)
    _check_kaggle_ready(slug, manual)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as staging:
        command = ["kaggle", "datasets", "download", "-d", slug, "-p", staging]
        log.info("running %s", " ".join(command))
        completed = subprocess.run(command, capture_output=True, text=True)
        if completed.returncode != 0:
            raise MedxpError(f"kaggle datasets download -d {slug}: failed ({completed.stderr.strip()[-300:]}); "
                             f"{manual.removeprefix('or ')}")
        archives = sorted(Path(staging).glob("*.zip"))
        if not archives:
            raise MedxpError(f"{staging}: the kaggle tool left no .zip for {slug}; expected one archive")
        return unpack_layout(archives[0], target, config, force=force)


def manual_download_hint(slug: str, target: Path, config: ExperimentConfig) -> str:
    """Where the data set comes from and where to put it, for a download by hand."""
    url = KAGGLE_URL.format(slug=slug)
    if config.dataset.layout in TABLE_LAYOUTS:  # one file: say which, and where it goes
        file_name = TABLE_LAYOUTS.get(config.dataset.layout).file_name(config.dataset)
        return f"or download {url} by hand and put its {file_name} at {target / file_name}"
    return (f"or download {url} by hand and unpack it into {target} (layout: projects/{config.dataset.name}/"
            f"README.md)")


def _check_kaggle_ready(slug: str, manual: str) -> None:
    if shutil.which("kaggle") is None:
        raise MedxpError(f"{slug}: the 'kaggle' command is not installed; expected `pip install kaggle` and an "
                         f"API token, {manual}")
    token = Path(os.environ.get("KAGGLE_CONFIG_DIR", "~/.kaggle")).expanduser() / "kaggle.json"
    if not token.is_file() and not (os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY")):
        raise MedxpError(f"{token}: no Kaggle API token; expected that file (Kaggle > Settings > Create New "
                         f"Token) or KAGGLE_USERNAME and KAGGLE_KEY in the environment, {manual}")


def unpack_layout(archive: Path, target: Path, config: ExperimentConfig, *, force: bool = False) -> Path:
    """Unzips `archive` and moves the folder holding the project's layout to `target`.

    Kaggle archives wrap the layout in extra folders (`chest_xray/`, a duplicate
    `chest_xray/chest_xray/`, `__MACOSX/`); the shallowest folder that looks like the
    layout wins.
    """
    staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=target.parent if target.parent.exists() else None))
    try:
        try:
            with zipfile.ZipFile(archive) as opened:
                opened.extractall(staging)
        except zipfile.BadZipFile as error:
            raise MedxpError(f"{archive}: not a zip archive ({error}); expected the data set's .zip") from None
        layout_root = find_layout_root(staging, config)
        if target.exists():
            if any(target.iterdir()) and not force:
                raise MedxpError(f"{target}: folder is not empty; expected an empty or absent folder (or force)")
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(layout_root), str(target))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("%s unpacked into %s", archive.name, target)
    return target


def find_layout_root(folder: Path, config: ExperimentConfig) -> Path:
    """The shallowest folder under `folder` whose sub-folders match the project's layout."""
    candidates = [folder, *sorted((p for p in folder.rglob("*") if p.is_dir() and "__MACOSX" not in p.parts),
                                  key=lambda p: (len(p.parts), str(p)))]
    for candidate in candidates:
        if _looks_like_layout(candidate, config):
            return candidate
    raise MedxpError(f"{folder}: no folder in the download holds the '{config.dataset.layout}' layout described "
                     f"in projects/{config.dataset.name}/README.md")


def _looks_like_layout(folder: Path, config: ExperimentConfig) -> bool:
    children = {normalise_name(p.name) for p in folder.iterdir() if p.is_dir()}
    layout = config.dataset.layout
    if layout == "image_folder_splits":
        return {"train", "test"} <= children
    if layout == "training_testing":
        return {"training", "testing"} <= children
    if layout == "class_folders":
        names = {normalise_name(n) for n in (*config.dataset.class_names, *config.dataset.class_aliases)}
        return len(children & names) >= 2
    # Other layouts (a CSV table, ...): the folder holding the data files.
    return any(p.is_file() and not p.name.startswith(".") for p in folder.iterdir())
