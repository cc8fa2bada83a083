"""The vision recipes end to end at toy scale on real BIRDS-525 photos (3 species, 32 px, 1 epoch):
train → resume → prune → export → evaluate, plus the pieces that carry the method (BN-L1 subgradient,
smallest-|γ| channel removal, weights-only checkpoints, the metrics) and the real LiteRT iNat model."""
from __future__ import annotations

import contextlib
import json
import os

import numpy as np
import pytest
import torch

from birdsdao.train.__main__ import COMMANDS, main
from birdsdao.train.data import eval_batch, list_species, load_split_tree, loaders, make_split_tree, split_species
from birdsdao.train.engine import bn_l1_subgradient, distillation_loss, fit, predict_logits
from birdsdao.train.evaluate import aggregate_by_label, expected_calibration_error, score_predictions
from birdsdao.train.models import load_classifier, logits_of, seed_classifier
from birdsdao.train.prune import paired_delta_ci, prune_by_bn_scale

from .conftest import BIRDS525, NATURAL, YOLO_WEIGHTS

SPECIES = ["AMERICAN GOLDFINCH", "AMERICAN ROBIN", "BARN OWL"]
TINY = ["--imgsz", "32", "--batch", "8", "--device", "cpu"]


@pytest.fixture(scope="module")
def birds(tmp_path_factory):
    """A 3-species folder-per-species set (symlinks to the shared photos)."""
    root = tmp_path_factory.mktemp("birds")
    for s in SPECIES:
        os.symlink(BIRDS525 / s, root / s)
    return root


@pytest.fixture(scope="module")
def trained(birds, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    metrics = main(["train", "--data", str(birds), "--epochs", "1", "--detector", str(YOLO_WEIGHTS),
                    "--out", str(out), *TINY])
    return out / "train", metrics


def test_every_command_has_help(capsys):
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exit_:
            main([name, "--help"])
        assert exit_.value.code == 0
        assert "--out" in capsys.readouterr().out


def test_split_holds_out_image_4_of_each_species_as_symlinks(birds, tmp_path):
    train, val = split_species(list_species(birds))
    root = make_split_tree(tmp_path / "split", train, val)
    for s in SPECIES:
        assert [p.name for p in (root / "val" / s).iterdir()] == ["4.jpg"]
        assert sorted(p.name for p in (root / "train" / s).iterdir()) == ["1.jpg", "2.jpg", "3.jpg"]
        assert (root / "val" / s / "4.jpg").is_symlink()


def test_train_writes_model_labels_metrics_and_loads_weights_only(trained, birds):
    from PIL import Image

    run, metrics = trained
    assert (run / "labels.txt").read_text(encoding="utf-8").splitlines() == SPECIES
    assert json.loads((run / "labels.json").read_text(encoding="utf-8")) == SPECIES
    saved = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    torch.load(run / "model.pt", weights_only=True)  # no pickled code inside
    model, ckpt = load_classifier(run / "model.pt")
    # top-1 is the share of the 3 held-out photos (4.jpg) that the saved model names right, recomputed here.
    with contextlib.ExitStack() as stack:
        held_out = [stack.enter_context(Image.open(birds / s / "4.jpg")) for s in SPECIES]
        with torch.inference_mode():
            predicted = logits_of(model, torch.from_numpy(eval_batch(held_out, ckpt["imgsz"]))).argmax(1).tolist()
    right = sum(p == i for i, p in enumerate(predicted))
    assert saved["val_images"] == 3 and saved["train_images"] == 9 and saved["top1"] == pytest.approx(right / 3)
    assert ckpt["names"] == SPECIES and logits_of(model, torch.rand(2, 3, 32, 32)).shape == (2, 3)


def test_train_resumes_from_its_last_epoch(trained, birds, capsys):
    run, first = trained
    capsys.readouterr()
    metrics = main(["train", "--data", str(birds), "--epochs", "2", "--resume", "--detector", str(YOLO_WEIGHTS),
                    "--out", str(run.parent), *TINY])
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert metrics["history"][0] == first["history"][0]  # epoch 1 was not re-run
    # A fresh 2-epoch run would give the same history on CPU, so check that the checkpoint was really used.
    assert "resumed train at epoch 1/2" in capsys.readouterr().out


def test_bn_l1_subgradient_adds_lambda_sign_gamma():
    bn = torch.nn.BatchNorm2d(4)
    bn.weight.data = torch.tensor([0.5, -0.2, 0.0, 2.0])
    bn.weight.grad = torch.zeros(4)
    bn_l1_subgradient(torch.nn.Sequential(bn), 0.1)
    assert torch.allclose(bn.weight.grad, torch.tensor([0.1, -0.1, 0.0, 0.1]))


def test_pruning_removes_the_channels_with_the_smallest_gammas():
    torch.manual_seed(0)
    model = seed_classifier(3, None)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data = 0.5 + torch.rand_like(m.weight)
    first = model.model[0].bn
    first.weight.data[:4] = 1e-4  # the four channels a global |γ| threshold must take first
    n0 = first.num_features
    x = torch.rand(2, 3, 32, 32)
    counts = prune_by_bn_scale(model, 32, ratio=0.05)
    assert counts["bn_channels_after"] < counts["bn_channels_before"]
    assert model.model[0].conv.out_channels <= n0 - 4
    assert model.model[0].bn.weight.min() > 0.1
    assert logits_of(model.eval(), x).shape == (2, 3)


def test_prune_then_export_then_evaluate(trained, tmp_path):
    run, _ = trained
    report = main(["prune", "--model", str(run / "model.pt"), "--ratio", "0.3", "--sparse-epochs", "1",
                   "--finetune-epochs", "1", "--latency-runs", "3", "--out", str(tmp_path), "--batch", "8",
                   "--device", "cpu", "--distill", "2", "--control"])
    assert report["finetuned"]["params"] < 0.7 * report["parent"]["params"]
    assert report["distill"] == 2 and report["finetuned"]["history"][0]["train_kd"] > 0
    assert "train_kd" not in report["sparse"]["history"][0]  # distillation is a fine-tuning addition only
    assert report["control"]["params"] == report["parent"]["params"]  # the control is not pruned
    lo, hi = report["ratios"]["top1_delta_ci95"]
    assert lo <= report["ratios"]["top1_delta_points"] <= hi
    lo, hi = report["ratios"]["top1_delta_vs_control_ci95"]
    assert lo <= report["ratios"]["top1_delta_vs_control_points"] <= hi
    assert report["finetuned"]["gflops"] < report["parent"]["gflops"]
    pruned = tmp_path / "prune" / "model.pt"
    torch.load(pruned, weights_only=True)
    model, ckpt = load_classifier(pruned)
    assert sum(p.numel() for p in model.parameters()) == report["finetuned"]["params"]

    info = main(["export", "--model", str(pruned), "--out", str(tmp_path)])
    assert info["max_abs_diff"] < 1e-4 and (tmp_path / "export" / "labels.txt").exists()

    by_kind = {}
    for path, name in ((pruned, "eval-pt"), (tmp_path / "export" / "model.onnx", "eval-onnx")):
        m = main(["evaluate", "--model", str(path), "--data", str(run / "split"), "--out", str(tmp_path), "--name", name])
        assert (tmp_path / name / "per_species_accuracy.png").stat().st_size > 1000
        assert (tmp_path / name / "reliability.png").stat().st_size > 1000
        by_kind[name] = m
    assert by_kind["eval-pt"]["images"] == 3
    assert by_kind["eval-pt"]["top1"] == by_kind["eval-onnx"]["top1"]
    assert by_kind["eval-pt"]["ece"] == pytest.approx(by_kind["eval-onnx"]["ece"], abs=1e-4)


def test_evaluate_default_litert_model_names_birds525_species(tmp_path):
    species = ["AMERICAN GOLDFINCH", "AMERICAN ROBIN", "BARN OWL", "MALLARD DUCK", "NORTHERN CARDINAL"]
    data = tmp_path / "data"
    data.mkdir()
    for s in species:
        os.symlink(BIRDS525 / s, data / s)
    m = main(["evaluate", "--data", str(data), "--index", "4", "--out", str(tmp_path)])
    assert m["kind"] == "litert" and m["images"] == 5 and m["coverable_species"] == 5
    assert m["top1"] >= 0.8  # measured 5/5 on these; the model is ~85% on the species it covers
    assert 0.0 <= m["ece"] <= 1.0


def test_metrics_aggregate_subspecies_and_compute_ece_by_hand():
    probs = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    agg, names = aggregate_by_label(probs, ["A", "B", "A"])
    assert names == ["A", "B"] and np.allclose(agg, [[0.7, 0.3], [0.9, 0.1]])
    # bins (0, .5] = {0.3 right}, (.5, 1] = {0.9 right, 0.7 wrong}: ECE = 2/3·|0.5−0.8| + 1/3·|1−0.3|.
    ece, table = expected_calibration_error(np.array([0.9, 0.7, 0.3]), np.array([1.0, 0.0, 1.0]), bins=2)
    assert ece == pytest.approx((2 / 3) * abs(0.5 - 0.8) + (1 / 3) * abs(1.0 - 0.3))
    assert [b["count"] for b in table] == [1, 2]
    s = score_predictions(agg, names, ["A", "B"])
    assert s["top1"] == 0.5 and s["top5"] == 1.0 and s["confusions"] == [{"true": "B", "predicted": "A", "count": 1}]
    assert s["per_species"]["A"]["accuracy"] == 1.0


def test_distillation_loss_is_zero_on_agreement_and_kl_times_t_squared():
    t = torch.tensor([[2.0, 0.0, -1.0]])
    assert distillation_loss(t, t, 4.0).item() == pytest.approx(0.0, abs=1e-7)
    s = torch.tensor([[0.0, 1.0, 0.0]])
    p, q = torch.softmax(t / 4, 1), torch.softmax(s / 4, 1)
    assert distillation_loss(s, t, 4.0).item() == pytest.approx(16 * (p * (p / q).log()).sum().item(), rel=1e-5)


def test_fit_with_a_teacher_pulls_the_student_towards_it(birds, tmp_path):
    """Pure distillation (weight 1) moves a fresh student's logits towards a confident teacher's: the KD
    term reaches the gradient. The teacher names a photo by its colour balance, unrelated to the labels, so
    the student starts far from it and the hard labels cannot be what brings it closer (a small conv net
    stands in for the pruned classifier so that a few steps suffice)."""

    class ColourTeacher(torch.nn.Module):
        def forward(self, x):
            m = x.mean((2, 3))
            return 50 * (m - m.mean(1, keepdim=True))

    table = list_species(birds)
    tr, va = loaders(table, table, SPECIES, 32, 4)
    teacher = ColourTeacher()
    torch.manual_seed(0)
    nn = torch.nn
    student = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                            nn.Flatten(), nn.Linear(8, 3))

    def kl_to_teacher():
        s, _ = predict_logits(student, va, "cpu")
        t, _ = predict_logits(teacher, va, "cpu")
        return distillation_loss(s, t, 1.0).item()

    before = kl_to_teacher()
    result = fit(student, tr, va, epochs=15, lr=1e-2, device="cpu", ckpt_path=tmp_path / "kd_state.pt",
                 teacher=teacher, distill_temperature=1.0, distill_weight=1.0, label_smoothing=0.0)
    assert all(h["train_kd"] > 0 for h in result["history"])
    assert kl_to_teacher() < 0.6 * before  # measured 0.69 -> 0.31; hard labels alone (weight 0): 0.89


def test_paired_delta_ci_brackets_the_difference():
    a = torch.tensor([True] * 50 + [False] * 50)
    b = a.clone()
    b[:5] = False  # b loses 5 of a's 50 hits: -5 points
    lo, hi = paired_delta_ci(a, b)
    assert lo < -5 < hi and hi <= 0.0 and lo >= -11
    assert paired_delta_ci(a, a) == [0.0, 0.0]


@pytest.mark.parametrize("kind", ["pt", "onnx"])
def test_server_names_species_with_a_configured_trained_model(trained, make_app, tmp_path, kind):
    """SPECIES_MODEL: what `train`/`prune` (.pt) or `export` (.onnx) wrote is what /detect ranks with."""
    run, _ = trained
    path = run / "model.pt"
    if kind == "onnx":
        main(["export", "--model", str(path), "--out", str(tmp_path)])
        path = tmp_path / "export" / "model.onnx"
    app = make_app(services=["species", "vision"], SPECIES_MODEL=str(path))
    client = app.test_client()
    health = client.get("/healthz").get_json()
    assert health["models"]["vision"]["species_model"] == str(path)
    photo = BIRDS525 / "AMERICAN ROBIN" / "4.jpg"
    r = client.post("/detect", data={"image": (photo.open("rb"), "robin.jpg"), "annotate": "0", "top_k": "5"})
    assert r.status_code == 200, r.get_json()
    species = r.get_json()["detections"][0]["species"]
    # Only the model's three species can carry probability, and its softmax is all of it.
    assert {s["label"] for s in species[:3]} == set(SPECIES)
    assert sum(s["confidence"] for s in species[:3]) == pytest.approx(1.0, abs=2e-3)
    assert all(s["confidence"] == 0 for s in species[3:])


def test_a_mistyped_species_model_answers_503_with_its_reason_instead_of_stopping_the_server(make_app):
    app = make_app(services=["species", "vision"], SPECIES_MODEL="model.bin")
    r = app.test_client().post("/detect", data={"image": ((BIRDS525 / "AMERICAN ROBIN" / "4.jpg").open("rb"), "a.jpg")})
    assert r.status_code == 503 and r.get_json()["code"] == "model_unavailable"
    assert "unknown species model type" in r.get_json()["error"]


# Odd shapes on purpose: a square BIRDS-525 crop, two off-square ones, and two large field photos (portrait
# and 16:9) that training used to shrink to a thumbnail before the held-out resize.
ODD_PHOTOS = [BIRDS525 / "AMERICAN ROBIN" / "4.jpg", BIRDS525 / "PLUSH CRESTED JAY" / "4.jpg",
              BIRDS525 / "PLUSH CRESTED JAY" / "1.jpg", NATURAL / "Black-billed_Cuckoo" / "Black-billed_Cuckoo.jpg",
              NATURAL / "American_Robin" / "American_Robin.jpg"]


@pytest.fixture(scope="module")
def odd_val_tree(tmp_path_factory):
    """A train/val tree whose held-out images are ODD_PHOTOS, filed under the 3 test species (the labels only
    need to be the model's; the check is that both paths score each photo the same)."""
    root = tmp_path_factory.mktemp("odd")
    table = {s: [] for s in SPECIES}
    for i, photo in enumerate(ODD_PHOTOS):
        table[SPECIES[i % len(SPECIES)]].append(photo)
    make_split_tree(root, {s: [BIRDS525 / s / "1.jpg"] for s in SPECIES}, table)
    return root


def test_held_out_tensors_are_exactly_the_predictors_input(odd_val_tree):
    from PIL import Image

    _, val, _ = load_split_tree(odd_val_tree)
    for imgsz in (32, 224):
        _, va = loaders(val, val, SPECIES, imgsz, batch=len(ODD_PHOTOS))
        x_val, _ = next(iter(va))
        photos = [p for s in SPECIES for p in val[s]]
        with contextlib.ExitStack() as stack:
            images = [stack.enter_context(Image.open(p)) for p in photos]
            x_pred = eval_batch(images, imgsz)
        assert x_val.shape == x_pred.shape == (len(ODD_PHOTOS), 3, imgsz, imgsz)
        assert np.array_equal(x_val.numpy(), x_pred)


def test_evaluate_scores_held_out_images_exactly_as_train_validates_them(trained, odd_val_tree, tmp_path):
    """`evaluate` on the run's own split gives the top-1 `train` recorded; and on large, off-square photos
    its per-image confidences and rankings are those of the validation pass of train/prune."""
    run, metrics = trained
    m = main(["evaluate", "--model", str(run / "model.pt"), "--data", str(run / "split"), "--out", str(tmp_path),
              "--name", "own"])
    assert m["images"] == metrics["val_images"] and m["top1"] == metrics["top1"]

    main(["evaluate", "--model", str(run / "model.pt"), "--data", str(odd_val_tree), "--out", str(tmp_path),
          "--name", "odd"])
    rows = [json.loads(line) for line in (tmp_path / "odd" / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    model, _ = load_classifier(run / "model.pt")
    _, val, _ = load_split_tree(odd_val_tree)
    _, va = loaders(val, val, SPECIES, 32, batch=32)
    logits, ys = predict_logits(model, va, "cpu")
    probs = torch.softmax(logits, 1)
    assert [r["true"] for r in rows] == [SPECIES[y] for y in ys]
    for row, p in zip(rows, probs):
        assert row["top5"] == [SPECIES[j] for j in p.argsort(descending=True)]
        assert row["confidence"] == pytest.approx(p.max().item(), abs=1e-6)
