"""MedMNIST's own metadata of its flags, and the generic project of a 2D flag without a project folder.

`medxp train --dataset bloodmnist` needs no `projects/bloodmnist/`: a MedMNIST 2D flag without
a project folder gets the config `generic_project(flag)` builds, the way a project file would:
class names, channels and task from the table below, the data under `$MEDXP_DATA_DIR/<flag>`
(or `data_dir=`), small_cnn defaults for 28 px images and the search space
`search_spaces/medmnist.yaml`. A project folder of the same name always wins.

The table holds what MedMNIST publishes for each flag (its `INFO`: label names in label order,
channels, task, split sizes, licence; the descriptions shortened), as in MedMNIST v2 (Yang et
al., "MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D biomedical image
classification", Scientific Data 10:41, 2023) and the `medmnist` package 3.0.2's `info.py`,
which MedMNIST+ (the 64, 128 and 224 px files) shares. It is copied here so that loading a
config needs neither that package (which pulls in torch) nor the network.

Refused, with the reason: chestmnist (multi-label: several findings per image, where medxp
trains single-label classifiers) and the 3D flags (28x28x28 volumes, where medxp reads 2D
images). RetinaMNIST's task is ordinal regression (diabetic retinopathy grades 0-4); medxp
treats it as 5-class classification, as projects/retinamnist does.

Light: no torch, no medxp.data (config loading imports this module).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from medxp.errors import MedxpError

CITATION = 'MedMNIST v2 (Yang et al., "MedMNIST v2", Scientific Data 10:41, 2023)'
GENERIC_SEARCH_SPACE = "medmnist"  # search_spaces/medmnist.yaml
GENERIC_IMAGE_SIZE = 28  # `<flag>.npz`; dataset.image_size=64|128|224 reads `<flag>_<size>.npz`


@dataclass(frozen=True)
class FlagInfo:
    """One MedMNIST flag as MedMNIST describes it.

    Attributes:
        flag: MedMNIST's name, e.g. `bloodmnist` (the npz is `<flag>.npz`).
        task: MedMNIST's task: `multi-class`, `binary-class` or `ordinal-regression`.
        labels: MedMNIST's label names; label i of the npz is `labels[i]`.
        channels: 1 (grey) or 3 (RGB).
        samples: Images in MedMNIST's train / val / test splits.
        licence: The data's licence as MedMNIST gives it.
        description: What the images are, shortened from MedMNIST's description.
        positive_label: Binary flags: the finding, the class their metrics are of.
        class_names: medxp's class names when `class_name(label)` would not serve (RetinaMNIST's
            labels are the bare grades `0`..`4`).
    """

    flag: str
    task: str
    labels: tuple[str, ...]
    channels: int
    samples: tuple[int, int, int]
    licence: str
    description: str
    positive_label: str = ""
    class_names: tuple[str, ...] = ()

    def medxp_class_names(self) -> tuple[str, ...]:
        """The class names a medxp config uses, label i first: `class_names`, else each label as `class_name` writes it."""
        return self.class_names or tuple(class_name(label) for label in self.labels)


def class_name(label: str) -> str:
    """MedMNIST's label as a medxp class name: lower case, each run of other characters one `_`.

    `femur-left` -> `femur_left`, `normal, benign` -> `normal_benign` (the names of the
    projects under projects/).
    """
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


_ORGANS = ("bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right", "liver", "lung-left",
           "lung-right", "pancreas", "spleen")

FLAGS_2D: dict[str, FlagInfo] = {info.flag: info for info in (
    FlagInfo("pathmnist", "multi-class",
             ("adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle", "normal colon mucosa",
              "cancer-associated stroma", "colorectal adenocarcinoma epithelium"),
             3, (89996, 10004, 7180), "CC BY 4.0",
             "colorectal cancer histology patches (H&E), 9 tissue types; NCT-CRC-HE-100K (train/val) and "
             "CRC-VAL-HE-7K from another centre (test)"),
    FlagInfo("dermamnist", "multi-class",
             ("actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma",
              "benign keratosis-like lesions", "dermatofibroma", "melanoma", "melanocytic nevi", "vascular lesions"),
             3, (7007, 1003, 2005), "CC BY-NC 4.0",
             "dermatoscopic images of pigmented skin lesions, 7 diagnoses; HAM10000"),
    FlagInfo("octmnist", "multi-class",
             ("choroidal neovascularization", "diabetic macular edema", "drusen", "normal"),
             1, (97477, 10832, 1000), "CC BY 4.0",
             "retinal optical coherence tomography, 4 diagnoses; center-cropped"),
    FlagInfo("pneumoniamnist", "binary-class", ("normal", "pneumonia"),
             1, (4708, 524, 624), "CC BY 4.0",
             "paediatric chest X-rays, pneumonia vs normal; center-cropped", positive_label="pneumonia"),
    FlagInfo("retinamnist", "ordinal-regression", ("0", "1", "2", "3", "4"),
             3, (1080, 120, 400), "CC BY 4.0",
             "retina fundus images, diabetic retinopathy grade 0-4; DeepDRiD challenge",
             class_names=("grade_0", "grade_1", "grade_2", "grade_3", "grade_4")),
    FlagInfo("breastmnist", "binary-class", ("malignant", "normal, benign"),
             1, (546, 78, 156), "CC BY 4.0",
             "breast ultrasound, malignant vs normal and benign", positive_label="malignant"),
    FlagInfo("bloodmnist", "multi-class",
             ("basophil", "eosinophil", "erythroblast",
              "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)", "lymphocyte", "monocyte",
              "neutrophil", "platelet"),
             3, (11959, 1712, 3421), "CC BY 4.0",
             "microscopy of individual normal blood cells, 8 cell types; center-cropped"),
    FlagInfo("tissuemnist", "multi-class",
             ("Collecting Duct, Connecting Tubule", "Distal Convoluted Tubule", "Glomerular endothelial cells",
              "Interstitial endothelial cells", "Leukocytes", "Podocytes", "Proximal Tubule Segments",
              "Thick Ascending Limb"),
             1, (165466, 23640, 47280), "CC BY 4.0",
             "human kidney cortex cells, 8 types; BBBC051, maximum over 7 slices"),
    FlagInfo("organamnist", "multi-class", _ORGANS, 1, (34561, 6491, 17778), "CC BY 4.0",
             "abdominal CT, 11 organs, axial slices; LiTS"),
    FlagInfo("organcmnist", "multi-class", _ORGANS, 1, (12975, 2392, 8216), "CC BY 4.0",
             "abdominal CT, 11 organs, coronal slices; LiTS"),
    FlagInfo("organsmnist", "multi-class", _ORGANS, 1, (13932, 2452, 8827), "CC BY 4.0",
             "abdominal CT, 11 organs, sagittal slices; LiTS"),
)}

_VOLUMES = ("3D volumes of 28x28x28 voxels (and larger in MedMNIST+); medxp's reader and models take 2D images "
            "(N, H, W) or (N, H, W, 3)")
REFUSED: dict[str, str] = {
    "chestmnist": ("multi-label: each image carries any number of 14 findings (NIH ChestX-ray14), and medxp trains "
                   "single-label classifiers, one class per image"),
    **{flag: _VOLUMES for flag in ("organmnist3d", "nodulemnist3d", "adrenalmnist3d", "fracturemnist3d",
                                   "vesselmnist3d", "synapsemnist3d")},
}


def refusal(flag: str) -> str:
    """The error message for a MedMNIST flag medxp cannot train: which flag and why."""
    return (f"dataset '{flag}': MedMNIST flag {flag} is not supported: {REFUSED[flag]}. "
            f"Expected a single-label 2D flag: {', '.join(sorted(FLAGS_2D))}")


def flag_info(flag: str) -> FlagInfo:
    """MedMNIST's metadata of a 2D flag.

    Raises:
        MedxpError: a refused flag (naming it and why), or a name that is no MedMNIST flag.
    """
    if flag in REFUSED:
        raise MedxpError(refusal(flag))
    if flag not in FLAGS_2D:
        raise MedxpError(f"'{flag}': not a MedMNIST 2D flag; expected one of {', '.join(sorted(FLAGS_2D))}")
    return FLAGS_2D[flag]


def generic_project(flag: str) -> dict[str, dict[str, Any]]:
    """The sections of a project file for a 2D flag: what `projects/<flag>/project.yaml` would hold.

    The defaults are those of the MedMNIST projects (pneumoniamnist, retinamnist, organsmnist):
    small_cnn with three blocks (32-64-128) for 28 px, Adam at 0.002, batch 64, 30 epochs on a
    cosine schedule, early stopping on val_loss after 10; a search of 16 trials (ASHA's first rung
    at epoch 8) whose 3 best may be registered as their mean. Primary metric: ROC AUC of the finding for a binary
    flag, accuracy for a multi-class one.

    Raises:
        MedxpError: as `flag_info`.
    """
    info = flag_info(flag)
    dataset: dict[str, Any] = {
        "name": flag,
        "layout": "medmnist",
        "class_names": list(info.medxp_class_names()),
        "image_size": GENERIC_IMAGE_SIZE,
        "channels": info.channels,
        "mean": [0.5] * info.channels,
        "std": [0.25] * info.channels,
        "provenance": provenance(info),
        "licence": info.licence,
        "source_id": flag,
    }
    if info.positive_label:
        dataset["positive_class"] = class_name(info.positive_label)
    return {
        "dataset": dataset,
        "model": {"name": "small_cnn", "channels": [32, 64, 128], "head_dropout": 0.3},
        "train": {"optimizer": "adam", "lr": 0.002, "batch_size": 64, "epochs": 30, "scheduler": "cosine",
                  "patience": 10, "monitor": "val_loss"},
        "eval": {"primary_metric": "roc_auc" if info.positive_label else "accuracy"},
        "search": {"space": GENERIC_SEARCH_SPACE, "n_trials": 16, "max_epochs": 30, "grace_period": 8,
                   "ensemble_top": 3},
    }


def provenance(info: FlagInfo) -> str:
    """Where the images come from, as a generic project records it (dataset.provenance)."""
    train, valid, test = (f"{count:,}" for count in info.samples)
    task = (f"; MedMNIST's task is {info.task}, trained here as {len(info.labels)}-class classification"
            if info.task == "ordinal-regression" else "")
    return (f"{CITATION}, flag {info.flag}: {info.description}; resized by MedMNIST; {train} / {valid} / {test} "
            f"train/val/test{task}. Generic medxp project built from MedMNIST's metadata (medxp.medmnist_flags).")
