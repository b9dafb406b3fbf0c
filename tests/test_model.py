"""Model loading through the public path users take, and its errors."""

import argparse
import hashlib
import shutil

import pytest
import torch

from conftest import write_esm2_checkpoint
from screening.model import ModelLoadError, load_model


def test_checkpoint_path_loads_fair_esm_esm2_and_records_sha256(tiny_checkpoint):
    loaded = load_model(str(tiny_checkpoint), device="cpu")
    from esm.model.esm2 import ESM2

    assert isinstance(loaded.model, ESM2)
    assert loaded.model.num_layers == 2 and loaded.model.embed_dim == 32
    assert not loaded.model.training
    assert loaded.checkpoint_sha256 == hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()
    assert loaded.name == "esm2_t2_tiny_test"
    # Weights are the saved ones, not a fresh initialisation.
    with torch.serialization.safe_globals([argparse.Namespace]):
        saved = torch.load(tiny_checkpoint, weights_only=True)["model"]
    key = "encoder.sentence_encoder.layers.0.fc1.weight"
    assert torch.equal(loaded.model.layers[0].fc1.weight, saved[key])


def test_fair_esm_name_resolves_from_weights_dir_without_contact_regression(tmp_path, tiny_checkpoint, monkeypatch):
    shutil.copy(tiny_checkpoint, tmp_path / "esm2_t6_8M_UR50D.pt")
    loaded = load_model("esm2_t6_8M_UR50D", weights_dir=tmp_path, device="cpu")
    assert loaded.name == "esm2_t6_8M_UR50D"
    assert loaded.checkpoint_path == str(tmp_path / "esm2_t6_8M_UR50D.pt")
    # The environment variable is the same place.
    monkeypatch.setenv("PLMSCREEN_WEIGHTS_DIR", str(tmp_path))
    assert load_model("esm2_t6_8M_UR50D", device="cpu").checkpoint_sha256 == loaded.checkpoint_sha256


def test_fair_esm_name_resolves_from_torch_hub_cache(tmp_path, tiny_checkpoint, monkeypatch):
    monkeypatch.delenv("PLMSCREEN_WEIGHTS_DIR", raising=False)
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
        shutil.copy(tiny_checkpoint, tmp_path / "hub" / "checkpoints" / "esm2_t12_35M_UR50D.pt")
        loaded = load_model("esm2_t12_35M_UR50D", device="cpu")
        assert "hub/checkpoints/esm2_t12_35M_UR50D.pt" in loaded.checkpoint_path
    finally:
        torch.hub.set_dir(previous)


def test_missing_named_model_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("PLMSCREEN_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as err:
        load_model("esm2_t33_650M_UR50D", weights_dir=tmp_path, device="cpu")
    message = str(err.value)
    assert str(tmp_path / "esm2_t33_650M_UR50D.pt") in message
    assert "hub" in message and "checkpoints/esm2_t33_650M_UR50D.pt" in message
    assert "download disabled" in message


def test_unknown_name_lists_known_models():
    with pytest.raises(ModelLoadError, match="unknown model 'esm3_huge'.*esm2_t6_8M_UR50D"):
        load_model("esm3_huge", device="cpu")


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(ModelLoadError, match="checkpoint not found: .*nope.pt"):
        load_model(str(tmp_path / "nope.pt"), device="cpu")


def test_corrupt_checkpoint_is_reported(tmp_path, tiny_checkpoint):
    broken = tmp_path / "esm2_broken.pt"
    broken.write_bytes(tiny_checkpoint.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="cannot read checkpoint .*esm2_broken.pt"):
        load_model(str(broken), device="cpu")


def test_wrong_format_checkpoint_is_reported(tmp_path):
    other = tmp_path / "esm2_other.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, other)
    with pytest.raises(ModelLoadError, match="not a fair-esm ESM-2 checkpoint"):
        load_model(str(other), device="cpu")


def test_mismatched_checkpoint_is_reported(tmp_path):
    path = write_esm2_checkpoint(tmp_path / "esm2_mismatch.pt", layers=2, embed_dim=32)
    with torch.serialization.safe_globals([argparse.Namespace]):
        data = torch.load(path, weights_only=True)
    data["cfg"]["model"].encoder_embed_dim = 64  # config no longer matches the weights
    torch.save(data, path)
    with pytest.raises(ModelLoadError, match="does not match the ESM-2 architecture"):
        load_model(str(path), device="cpu")


class NotAllowed:
    """Stands for any pickled object outside the allow-list."""


def test_unsafe_pickle_is_refused(tmp_path):
    evil = tmp_path / "esm2_evil.pt"
    torch.save({"cfg": {"model": NotAllowed()}, "model": {}}, evil)
    with pytest.raises(ModelLoadError, match="cannot read checkpoint"):
        load_model(str(evil), device="cpu")


def test_cuda_request_without_gpu_is_clear():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ModelLoadError, match="no CUDA GPU"):
        load_model("plmscreen-mini", device="cuda")
