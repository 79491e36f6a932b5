"""`--weights` papercuts: the hub is tried once (an unreachable hub fails fast, HF_HUB_OFFLINE=1 skips it),
and a typo of `random` is caught before any network access."""

import socket
import time

import pytest
from typer.testing import CliRunner

import cxrfeat.weights as w
from cxrfeat.backbone import load_backbone
from cxrfeat.errors import UserError

GENEROUS_S = 20  # a sanity bound that catches huggingface_hub's ~25 s of retries, not a performance test


@pytest.fixture
def nowhere(tmp_path, monkeypatch):
    """An empty Hugging Face cache and offline mode off."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    return monkeypatch


def _endpoint(monkeypatch, url):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setattr(constants, "ENDPOINT", url)  # read at import, so patch the constant too


def test_an_unreachable_hub_is_tried_once_and_the_error_says_what_to_do(nowhere):
    _endpoint(nowhere, "http://127.0.0.1:9")  # the discard port: connection refused
    t0 = time.perf_counter()
    with pytest.raises(UserError) as error:
        load_backbone("microsoft/resnet-50")
    assert time.perf_counter() - t0 < GENEROUS_S
    message = str(error.value)
    assert "127.0.0.1:9" in message and "unreachable" in message and "tried once" in message
    assert "HF_HUB_OFFLINE=1" in message and "--weights random" in message and "--weights DIR" in message


def test_a_hub_that_never_answers_is_given_up_after_the_timeout(nowhere):
    # A socket that listens but never answers: the connection opens (backlog), the reply never comes.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        _endpoint(nowhere, f"http://127.0.0.1:{server.getsockname()[1]}")
        nowhere.setattr(w, "HUB_TIMEOUT_S", 0.5)
        t0 = time.perf_counter()
        with pytest.raises(UserError, match="unreachable") as error:
            w.resolve("microsoft/resnet-50")
        assert time.perf_counter() - t0 < GENEROUS_S
    assert "HF_HUB_OFFLINE" in str(error.value)


def test_offline_mode_goes_straight_to_the_cache(nowhere):
    nowhere.setenv("HF_HUB_OFFLINE", "1")  # set after import: read at call time as well
    nowhere.setattr(w, "hub_reachable", lambda *a, **k: pytest.fail("the hub was asked although offline"))
    with pytest.raises(UserError, match="HF_HUB_OFFLINE is set"):
        w.resolve("microsoft/resnet-50")


@pytest.mark.parametrize("typo", ["randon", "rnadom", "Random", "RANDOM", "radnom", "rando"])
def test_a_typo_of_random_says_did_you_mean_without_the_network(nowhere, typo):
    nowhere.setattr(w, "hub_reachable", lambda *a, **k: pytest.fail("the hub was asked"))
    nowhere.setattr(w, "_download", lambda *a, **k: pytest.fail("the hub cache was asked"))
    with pytest.raises(UserError, match="did you mean random"):
        load_backbone(typo)


@pytest.mark.parametrize("name", ["microsoft/resnet-50", "resnet-50", "timm/resnet50.a1_in1k", "random"])
def test_real_names_are_not_typos(name):
    assert not w.looks_like_random(name)


def test_a_folder_named_like_a_typo_is_a_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "randon").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        w.resolve("randon")


def test_finetune_refuses_the_typo_before_building_any_cache(tmp_path):
    from heads.cli import app

    result = CliRunner().invoke(app, ["finetune", "--weights", "randon", "--data-dir", str(tmp_path),
                                      "--runs", str(tmp_path / "runs"), "--cache", str(tmp_path / "cache")])
    assert result.exit_code == 2 and "did you mean random?" in result.output, result.output
    assert not (tmp_path / "cache").exists() and not (tmp_path / "runs").exists()
