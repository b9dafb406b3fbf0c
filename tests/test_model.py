"""Model loading through the public path users take, and its errors."""

import argparse
import hashlib
import shutil

import pytest
import torch

from conftest import write_esm2_checkpoint
from plmscreen.screening.model.checkpoints import ModelLoadError, load_model


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


class OpensAFile:
    """Unpickling this runs code: it creates ``marker``. A safe loader must refuse it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def hub_dir(tmp_path):
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(previous)


def fake_release(monkeypatch, source):
    """Stand in for the network: every download returns ``source``'s bytes; URLs are recorded."""
    fetched = []

    def download(url, dst, *args, **kwargs):
        fetched.append(url)
        shutil.copyfile(source, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    return fetched


def test_first_download_is_saved_then_read_with_weights_only(tmp_path, tiny_checkpoint, hub_dir, monkeypatch):
    fetched = fake_release(monkeypatch, tiny_checkpoint)
    loaded = load_model("esm2_t6_8M_UR50D", device="cpu", allow_download=True)
    assert fetched == ["https://dl.fbaipublicfiles.com/fair-esm/models/esm2_t6_8M_UR50D.pt"]  # no contact-regression file
    assert loaded.checkpoint_path == str(hub_dir / "checkpoints" / "esm2_t6_8M_UR50D.pt")
    assert loaded.checkpoint_sha256 == hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()
    # A second resolution finds the cached file and downloads nothing.
    load_model("esm2_t6_8M_UR50D", device="cpu", allow_download=True)
    assert len(fetched) == 1


def test_downloaded_pickle_is_never_executed(tmp_path, hub_dir, monkeypatch):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "release.pt"
    torch.save({"cfg": {"model": OpensAFile(marker)}, "model": {}}, evil)
    fake_release(monkeypatch, evil)
    with pytest.raises(ModelLoadError, match="cannot read checkpoint"):
        load_model("esm2_t12_35M_UR50D", device="cpu", allow_download=True)
    assert not marker.exists(), "the downloaded file was unpickled with weights_only=False"


def test_resolving_a_download_does_not_load_the_model(tiny_checkpoint, hub_dir, monkeypatch):
    """The CLI resolves the checkpoint up front; a 15B model must not be loaded into that process."""
    from plmscreen.screening.model.checkpoints import resolve_checkpoint

    fake_release(monkeypatch, tiny_checkpoint)

    def no_load(*args, **kwargs):
        raise AssertionError("torch.load was called while resolving a checkpoint")

    monkeypatch.setattr(torch, "load", no_load)
    name, path = resolve_checkpoint("esm2_t30_150M_UR50D", allow_download=True)
    assert (name, path) == ("esm2_t30_150M_UR50D", hub_dir / "checkpoints" / "esm2_t30_150M_UR50D.pt")


def test_checkpoint_check_maps_the_file_instead_of_reading_it(tmp_path):
    """check_checkpoint (the CLI's up-front check) reads a 400 MB checkpoint's layout without
    holding its weights: the peak memory of a fresh process grows far less than the file."""
    import subprocess
    import sys

    big = tmp_path / "esm2_big.pt"
    cfg = argparse.Namespace(encoder_layers=1, encoder_embed_dim=8, encoder_attention_heads=1, token_dropout=True)
    torch.save({"cfg": {"model": cfg}, "model": {"w": torch.ones(100_000_000)}}, big)
    # VmHWM (peak resident memory) starts afresh at exec; ru_maxrss would inherit this process's peak.
    script = (
        "import re, sys, torch\n"
        "from plmscreen.screening.model.checkpoints import check_checkpoint, read_checkpoint\n"
        "def peak_mb():\n"
        "    return int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) // 1024\n"
        "before = peak_mb()\n"
        "(check_checkpoint if sys.argv[2] == 'check' else read_checkpoint)(sys.argv[1])\n"
        "print(peak_mb() - before)\n"
    )
    grown = {how: int(subprocess.run([sys.executable, "-c", script, str(big), how], capture_output=True, text=True,
                                     check=True).stdout.split()[-1]) for how in ("check", "read")}
    assert grown["read"] > 300, grown  # the comparison is real: a full read costs the file's size
    assert grown["check"] < 50, grown


def test_checkpoint_check_reports_a_foreign_file(tmp_path):
    from plmscreen.screening.model.checkpoints import check_checkpoint

    other = tmp_path / "esm2_other.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, other)
    with pytest.raises(ModelLoadError, match="not a fair-esm ESM-2 checkpoint"):
        check_checkpoint(other)


def test_rotary_tables_keep_their_tensor_so_its_address_is_not_reused():
    """The cos/sin cache is keyed by inv_freq's address: a freed model's address, reused by the
    next model's inv_freq of another head size, once served that model the wrong tables (a size
    mismatch in attention when two checkpoints ran one after the other in one process)."""
    import gc
    import weakref

    import torch

    from plmscreen.screening.model.forward import RotaryTables

    tables = RotaryTables()
    inv_freq = 1.0 / (10000 ** (torch.arange(0, 8, 2).float() / 8))
    alive = weakref.ref(inv_freq)
    cos, sin = tables.get(inv_freq, 12)
    assert cos.shape == sin.shape == (12, 8)
    del inv_freq
    gc.collect()
    assert alive() is not None, "the cache must hold inv_freq while its tables are cached"
    other = 1.0 / (10000 ** (torch.arange(0, 16, 2).float() / 16))
    assert tables.get(other, 12)[0].shape == (12, 16)


def _load_from_threads(read, path, n_threads: int = 8, loads_each: int = 15) -> list[str]:
    """Errors from ``n_threads`` threads each calling ``read(path)`` ``loads_each`` times, all at once."""
    import threading

    start = threading.Barrier(n_threads)
    errors: list[str] = []

    def work():
        start.wait()
        for _ in range(loads_each):
            try:
                read(path)
            except Exception as exc:  # collected, not raised: the assertion names them
                errors.append(f"{type(exc).__name__}: {str(exc)[:120]}")

    threads = [threading.Thread(target=work) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_checkpoint_reads_from_many_threads_at_once(tiny_checkpoint, tmp_path):
    """Threads-only Dask workers load the model at the same moment. torch's safe_globals context
    is process-wide, so one thread leaving it removed argparse.Namespace from another's unpickler
    ("Weights only load failed": a shard retried for nothing in CI). Every reader must survive it,
    including the family sniffing, which would otherwise misread a CARP file as fair-esm."""
    from plmscreen.screening.model.backends.resolve import _pt_family
    from plmscreen.screening.model.checkpoints import check_checkpoint, read_checkpoint

    # Unguarded, about two rounds in three of 8 x 15 loads fail (the control below); five rounds
    # each leave a race-free pass to chance about once in 200.
    for _ in range(5):
        assert _load_from_threads(read_checkpoint, tiny_checkpoint) == []
        assert _load_from_threads(check_checkpoint, tiny_checkpoint) == []
        families: list[str] = []
        assert _load_from_threads(lambda p: families.append(_pt_family(p)), tiny_checkpoint) == []
        assert set(families) == {"fair-esm"} and len(families) == 8 * 15


def test_unguarded_safe_globals_is_what_races(tiny_checkpoint):
    """The control for the test above: the same threads through torch's bare safe_globals context
    do fail here (if a torch release makes the context thread-local, this turns red and the lock in
    checkpoints.load_weights_only can go)."""
    def bare(path):
        with torch.serialization.safe_globals([argparse.Namespace]):
            torch.load(path, map_location="cpu", weights_only=True)

    errors = []
    for _ in range(40):  # a race: about one round in three shows none (0.35^40 ~ 1e-18)
        errors = _load_from_threads(bare, tiny_checkpoint)
        if errors:
            break
    assert errors and all("Weights only load failed" in e for e in errors)
