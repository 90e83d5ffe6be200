"""`medxp predict`: a folder of demo images scored by a trained model, into a CSV; unreadable files listed."""

from __future__ import annotations

import csv
import shutil

import pytest

from medxp.cli import main
from medxp.data.synthetic import generate_fundus_demo
from tests.conftest import SMALL_CNN

pytestmark = pytest.mark.slow

# A demo model that has learnt the cup-to-disc ratio: 64 px, 120 images per class, 12 epochs (about a minute).
ACCURATE = ("data.demo_images_per_class=120 data.demo_folds=3 data.demo_image_size=64 dataset.image_size=64 "
            "model.channels=[16,32,64] epochs=12 lr=0.003 eval.bootstrap_resamples=50")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(model URI, data folder, store): one small CNN trained on generated fundus images."""
    import mlflow

    root = tmp_path_factory.mktemp("predict")
    with pytest.MonkeyPatch.context() as patch:
        uri = f"sqlite:///{root}/mlflow.db"
        patch.chdir(root)
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        data = root / "data"
        assert main(["train", "--dataset", "glaucoma", "--experiment", SMALL_CNN, "--no-progress",
                     "--set", f"data_dir={data}", "--set", ACCURATE]) == 0
        [run] = mlflow.search_runs(experiment_names=["glaucoma"], output_format="list")
        [model] = run.outputs.model_outputs
        yield f"models:/{model.model_id}", data, root


def test_a_folder_of_demo_images_gives_one_row_each_mostly_right(trained, tmp_path, capsys):
    model_uri, _, _ = trained
    images = tmp_path / "incoming"
    generate_fundus_demo(images, images_per_class=10, folds=3, image_size=64, seed=7)  # images it never saw
    fold = images / "Fold0"  # every fold holds every image; one fold's are each image once
    files = [path for label in ("normal", "abnormal") for path in sorted(fold.rglob(f"{label}/*.jpg"))[:10]]
    folder = tmp_path / "to_score"
    for index, path in enumerate(files):
        target = folder / ("nested" if index % 2 else "") / f"{path.parent.name}_{index}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    (folder / "notes.txt").write_text("not an image: the walk leaves it out")
    broken = folder / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # a PNG signature, then nothing readable
    output = tmp_path / "out" / "predictions.csv"

    assert main(["predict", "--dataset", "glaucoma", "--model-uri", model_uri, "--no-progress",
                 "--output", str(output), str(folder)]) == 0
    printed = capsys.readouterr().out
    assert f"{len(files)} file(s) predicted, 1 not readable" in printed and "broken.png" in printed

    rows = list(csv.DictReader(output.open()))
    assert len(rows) == len(files) + 1
    header = list(rows[0])
    assert header[:3] == ["path", "prob_normal", "prob_abnormal"] and header[-1] == "error"
    assert {"label", "threshold", "model_name", "model_version"} <= set(header)
    [failed] = [row for row in rows if row["error"]]
    assert failed["path"].endswith("broken.png") and failed["prob_normal"] == ""
    scored = [row for row in rows if not row["error"]]
    for row in scored:
        assert abs(float(row["prob_normal"]) + float(row["prob_abnormal"]) - 1) < 1e-5
        assert row["label"] in ("normal", "abnormal")
    right = sum(row["label"] == row["path"].rsplit("/", 1)[1].split("_")[0] for row in scored)
    assert right >= 0.8 * len(scored), f"{right}/{len(scored)} labels right"


def test_predict_explains_each_image_with_a_lime_png(trained, tmp_path, capsys):
    model_uri, data, _ = trained
    images = sorted((data / "Fold0" / "test" / "abnormal").glob("*.jpg"))[:2]
    output = tmp_path / "two.csv"
    assert main(["predict", "--dataset", "glaucoma", "--model-uri", model_uri, "--no-progress", "--explain",
                 "--samples", "100", "--output", str(output), *map(str, images)]) == 0
    pngs = sorted((tmp_path / "two_lime").glob("*.png"))
    assert [p.stem for p in pngs] == sorted(p.stem for p in images)
    assert all(p.stat().st_size > 5000 for p in pngs)


def test_a_missing_path_is_named(trained, tmp_path, capsys):
    model_uri, _, _ = trained
    assert main(["predict", "--dataset", "glaucoma", "--model-uri", model_uri, str(tmp_path / "nowhere")]) == 2
    assert f"{tmp_path / 'nowhere'}: no such file or folder" in capsys.readouterr().err
