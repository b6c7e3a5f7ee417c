"""wikiart-import-seed: a state dict saved by the seed notebooks -> save_pretrained with the same logits."""

from __future__ import annotations

import hashlib
import json
import pickle

import pytest
import torch
from torch import nn

from tests.support.seed_model import GENRES, ResNet50_RowColBiGRU, ResNet50_RowColBiGRU_MultiTask, class_file
from wikiart.formats.manifest import Manifest
from wikiart.model.classifier import CNNRNNClassifier
from wikiart.cli.import_seed import PAD_BIAS, SeedImportError, import_seed

CLASSES = {"artist": ["Albrecht_Durer", "Boris_Kustodiev", "Camille_Pissarro"],
           "genre": GENRES[:2], "style": ["Baroque", "Cubism", "Fauvism", "Rococo", "Ukiyo_e"]}


def trained_like(model: nn.Module) -> nn.Module:
    """Random BatchNorm statistics too, so dropping or swapping them changes the logits."""
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2), m.running_var.uniform_(0.5, 2.0), m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2), m.num_batches_tracked.fill_(123)
    return model.eval()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(3, 3, 64, 96, generator=torch.Generator().manual_seed(0))  # a 2 x 3 map: rows != columns


def test_single_task_logits_and_classes(tmp_path, images):
    seed = trained_like(ResNet50_RowColBiGRU(len(GENRES)))
    weights = tmp_path / "best_genre_rowcol_bigru.pt"
    # DataParallel-prefixed and wrapped: both are unwrapped
    torch.save({"state_dict": {f"module.{k}": v for k, v in seed.state_dict().items()}}, weights)
    import_seed(weights, "genre", [str(class_file(tmp_path / "genre_class.txt", GENRES))], tmp_path / "out")
    model = CNNRNNClassifier.from_pretrained(str(tmp_path / "out")).eval()
    assert model.backbone_name == "resnet18" and model.class_names == {"genre": GENRES}
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (config["proj_dim"], config["rnn_hidden"], config["rnn_layers"]) == (12, 8, 2)
    assert (config["image_size"], config["eval_resize"], config["attention_pool"]) == (384, 416, "linear")
    with torch.no_grad():
        torch.testing.assert_close(model(images)["genre"], seed(images), rtol=1e-5, atol=1e-5)
    card = (tmp_path / "out" / "README.md").read_text()
    assert weights.name in card and hashlib.sha256(weights.read_bytes()).hexdigest() in card


def test_combined_pads_the_short_style_head(tmp_path, images, capsys):
    seed = trained_like(ResNet50_RowColBiGRU_MultiTask(4, 3, 2))  # style: 4 outputs for 5 names
    weights = tmp_path / "best_general_rowcol_bigru_multitask.pt"
    torch.save(seed.state_dict(), weights)
    Manifest(classes=CLASSES, splits={}).save(tmp_path)
    import_seed(weights, "combined", [str(tmp_path)], tmp_path / "out")
    assert "style head has 4 outputs for 5 classes: Ukiyo_e padded" in capsys.readouterr().out
    model = CNNRNNClassifier.from_pretrained(str(tmp_path / "out")).eval()
    assert model.class_names == CLASSES
    with torch.no_grad():
        ours, (style, artist, genre) = model(images), seed(images)
    torch.testing.assert_close(ours["artist"], artist, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours["genre"], genre, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours["style"][:, :4], style, rtol=1e-5, atol=1e-5)
    assert torch.all(ours["style"][:, 4] < PAD_BIAS / 2) and torch.all(ours["style"].argmax(1) < 4)
    assert torch.all(ours["style"].softmax(1)[:, 4] == 0)


def test_class_files_per_task_and_the_same_logits(tmp_path, images):
    seed = trained_like(ResNet50_RowColBiGRU_MultiTask(5, 3, 2))
    torch.save(seed.state_dict(), tmp_path / "w.pt")
    specs = [f"{t}={class_file(tmp_path / f'{t}_class.txt', names)}" for t, names in CLASSES.items()]
    model = import_seed(tmp_path / "w.pt", "combined", specs, tmp_path / "out")
    assert model.class_names == CLASSES
    with torch.no_grad():
        torch.testing.assert_close(model(images)["style"], seed(images)[0], rtol=1e-5, atol=1e-5)


def test_more_outputs_than_names_and_a_wrong_task_are_refused(tmp_path):
    torch.save(ResNet50_RowColBiGRU(6).state_dict(), tmp_path / "w.pt")
    classes = [str(class_file(tmp_path / "genre_class.txt", GENRES))]
    with pytest.raises(SeedImportError, match="genre head has 6 outputs but --classes names 5"):
        import_seed(tmp_path / "w.pt", "genre", classes, tmp_path / "out")
    Manifest(classes=CLASSES, splits={}).save(tmp_path)
    with pytest.raises(SeedImportError, match="single-head seed model: use --task artist, genre or style"):
        import_seed(tmp_path / "w.pt", "combined", [str(tmp_path / "manifest.json")], tmp_path / "out")
    assert not (tmp_path / "out").exists()


class NotTensors:
    pass


@pytest.mark.parametrize("broken", ["renamed", "renamed_stem", "pickle", "list"])
def test_not_a_seed_state_dict_is_refused_and_nothing_written(tmp_path, broken):
    state = ResNet50_RowColBiGRU(len(GENRES)).state_dict()
    weights = tmp_path / "w.pt"
    if broken.startswith("renamed"):
        key = "stem.5.0.conv1.weight" if broken == "renamed_stem" else "row_gru.weight_hh_l1"
        state[key + "_renamed"] = state.pop(key)
        torch.save(state, weights)
    elif broken == "pickle":
        weights.write_bytes(pickle.dumps(NotTensors(), protocol=2))
    else:
        torch.save([1, 2, 3], weights)
    message = {"renamed": r"not a seed model \(missing keys row_gru.weight_hh_l1; unknown keys "
                          r"row_gru.weight_hh_l1_renamed\)",
               "renamed_stem": r"missing keys stem.5.0.conv1.weight; unknown keys stem.5.0.conv1.weight_renamed\)",
               "pickle": "not a PyTorch state dict that loads with weights_only=True",
               "list": "expected a state dict .* got list"}[broken]
    with pytest.raises(SeedImportError, match=message) as info:
        import_seed(weights, "genre", [str(class_file(tmp_path / "c.txt", GENRES))], tmp_path / "out")
    assert "\n" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt", "w.pt"]  # no out/, no temporary


def test_class_file_errors(tmp_path):
    torch.save(ResNet50_RowColBiGRU(2).state_dict(), tmp_path / "w.pt")
    (tmp_path / "gap.txt").write_text("0 a\n2 b\n")
    with pytest.raises(SeedImportError, match="must run 0..N-1"):
        import_seed(tmp_path / "w.pt", "genre", [str(tmp_path / "gap.txt")], tmp_path / "out")
    (tmp_path / "ok.txt").write_text("1 b\n0 a\n\n")
    with pytest.raises(SeedImportError, match="for --task combined give a manifest"):
        import_seed(tmp_path / "w.pt", "combined", [str(tmp_path / "ok.txt")], tmp_path / "out")
    assert import_seed(tmp_path / "w.pt", "genre", [str(tmp_path / "ok.txt")],
                       tmp_path / "out").class_names == {"genre": ["a", "b"]}
