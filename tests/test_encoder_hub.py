"""Finding an encoder's files: Hugging Face repos through huggingface_hub against a real HTTP server on 127.0.0.1
that answers as the Hub's file API does, the cache without network, offline machines, and local folders."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fake_hub import FakeRepo, _serving, fake_hub

from zoobot_core.encoders.hub import (
    HF_PREFIX,
    EncoderConfigError,
    EncoderUnavailableError,
    encoder_folder,
    is_encoder_name,
    parse_hub_name,
    read_config,
)
from zoobot_core.encoders.weights import read_state_dict, weights_file

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = Path(__file__).parent / "fixtures" / "torch_files" / "module.bin"
REPO_ID = "someone/zoobot-encoder-test"
NAME = f"{HF_PREFIX}{REPO_ID}"
CONFIG = {"architecture": "convnext_nano", "num_classes": 0, "num_features": 640}
COMMIT = "0123456789abcdef0123456789abcdef01234567"  # what main resolves to
TAGGED = "89abcdef0123456789abcdef0123456789abcdef"  # what the tag v1 resolves to


def _repos(**extra: FakeRepo) -> dict[str, FakeRepo]:
    files = {"config.json": json.dumps(CONFIG).encode(), "pytorch_model.bin": WEIGHTS.read_bytes(), "README.md": b"# test"}
    tagged = {**files, "config.json": json.dumps({**CONFIG, "num_features": 1}).encode()}
    return {REPO_ID: FakeRepo({"main": (COMMIT, files), "v1": (TAGGED, tagged), COMMIT: (COMMIT, files)}), **extra}


@pytest.fixture(autouse=True)
def _online(monkeypatch):
    """These tests choose offline mode themselves, whatever the runner's environment says (huggingface_hub reads it at import)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def _closed_port_endpoint() -> str:
    with _serving(http.server.BaseHTTPRequestHandler) as url:
        pass
    return url  # nothing listens there now


def _check_message(message: str, *more: str) -> None:
    for needed in (REPO_ID, "config.json", "pytorch_model.bin", f"hf download {REPO_ID} config.json pytorch_model.bin", "HF_HOME",
                   "finetune.base_model / representations.encoder", *more):
        assert needed in message, (needed, message)


def test_downloads_into_the_cache_then_needs_no_network(tmp_path):
    cache = tmp_path / "hf"
    with fake_hub(_repos()) as hub:
        folder = encoder_folder(NAME, endpoint=hub.endpoint, cache_dir=cache)
        requests = list(hub.requests)
    assert folder == cache / "models--someone--zoobot-encoder-test" / "snapshots" / COMMIT
    assert json.loads((folder / "config.json").read_text()) == CONFIG
    assert (folder / "pytorch_model.bin").read_bytes() == WEIGHTS.read_bytes() and not (folder / "model.safetensors").exists()
    assert weights_file(folder) == folder / "pytorch_model.bin" and read_state_dict(weights_file(folder)).keys() == read_state_dict(WEIGHTS).keys()
    assert not (folder / "README.md").exists()  # only what an encoder needs
    resolve = f"/{REPO_ID}/resolve/main"
    assert requests[:4] == [("HEAD", f"{resolve}/config.json"), ("HEAD", f"{resolve}/config.json"), ("GET", f"{resolve}/config.json"),
                            ("HEAD", f"{resolve}/model.safetensors")]  # a reachability check, then hf_hub_download
    assert requests[4:6] == [("HEAD", f"{resolve}/pytorch_model.bin"), ("GET", f"/cdn/{hashlib.sha256(WEIGHTS.read_bytes()).hexdigest()}")]

    # the server is gone: the cache answers, with no request at all
    assert encoder_folder(NAME, endpoint=hub.endpoint, cache_dir=cache) == folder
    assert encoder_folder(NAME, endpoint=_closed_port_endpoint(), cache_dir=cache) == folder
    assert hub.requests == requests


def test_prefers_safetensors_and_honours_a_revision(tmp_path):
    weights = {"config.json": json.dumps(CONFIG).encode(), "model.safetensors": b"safetensors bytes", "pytorch_model.bin": b"never fetched"}
    with fake_hub(_repos(**{"someone/with-safetensors": FakeRepo({"main": (COMMIT, weights)})})) as hub:
        folder = encoder_folder(f"{HF_PREFIX}someone/with-safetensors", endpoint=hub.endpoint, cache_dir=tmp_path)
        assert (folder / "model.safetensors").read_bytes() == b"safetensors bytes" and not (folder / "pytorch_model.bin").exists()
        assert not any(path.endswith("pytorch_model.bin") for _, path in hub.requests)

        tagged = encoder_folder(f"{NAME}@v1", endpoint=hub.endpoint, cache_dir=tmp_path)
        assert tagged.name == TAGGED and read_config(tagged)["num_features"] == 1
        assert ("GET", f"/{REPO_ID}/resolve/v1/config.json") in hub.requests
        pinned = encoder_folder(f"{NAME}@{COMMIT}", endpoint=hub.endpoint, cache_dir=tmp_path)
        assert pinned.name == COMMIT and read_config(pinned) == CONFIG


@pytest.mark.parametrize(("name", "reason"), [
    (f"{HF_PREFIX}someone/absent", "has no repo someone/absent"),
    (f"{NAME}@v9", "has no revision v9"),
    (f"{HF_PREFIX}someone/no-weights", "has neither model.safetensors nor pytorch_model.bin"),
    (f"{HF_PREFIX}someone/no-config", "has no config.json"),
])
def test_a_repo_the_hub_cannot_give_is_unavailable(tmp_path, name, reason):
    repos = _repos(**{"someone/no-weights": FakeRepo({"main": (COMMIT, {"config.json": b"{}"})}),
                      "someone/no-config": FakeRepo({"main": (COMMIT, {"pytorch_model.bin": b"x"})})})
    with fake_hub(repos) as hub, pytest.raises(EncoderUnavailableError, match=reason) as error:
        encoder_folder(name, endpoint=hub.endpoint, cache_dir=tmp_path)
    assert "hf download" in str(error.value) and "HF_HOME" in str(error.value)


def test_offline_with_an_empty_cache_says_what_to_fetch_and_fails_at_once(tmp_path):
    start = time.monotonic()
    with pytest.raises(EncoderUnavailableError) as error:
        encoder_folder(NAME, endpoint=_closed_port_endpoint(), cache_dir=tmp_path / "empty")
    assert time.monotonic() - start < 5  # not huggingface_hub's retries (23 s for a refused connection)
    _check_message(str(error.value), "cannot be reached", str(tmp_path / "empty"))
    assert not (tmp_path / "empty" / "models--someone--zoobot-encoder-test" / "snapshots").exists()


def _python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`python -c code` in this checkout, with the environment `env` on top of this one's (HF_* variables cleared first)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    return subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True, cwd=REPO, timeout=60)


RESOLVE = f"from zoobot_core.encoders.hub import encoder_folder; print(encoder_folder({NAME!r}))"


def test_the_environment_chooses_the_endpoint_and_the_cache(tmp_path):
    home = tmp_path / "hf_home"
    with fake_hub(_repos()) as hub:
        result = _python(RESOLVE, {"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(home)})
        assert result.returncode == 0, result.stderr
        assert ("GET", f"/{REPO_ID}/resolve/main/config.json") in hub.requests
    folder = Path(result.stdout.strip().splitlines()[-1])
    assert folder == home / "hub" / "models--someone--zoobot-encoder-test" / "snapshots" / COMMIT
    assert (folder / "pytorch_model.bin").read_bytes() == WEIGHTS.read_bytes()

    # the machine goes offline: the cache under HF_HOME is enough
    offline = _python(RESOLVE, {"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 0, offline.stderr
    assert Path(offline.stdout.strip().splitlines()[-1]) == folder


def test_hf_hub_offline_with_an_empty_cache_is_unavailable_and_sends_nothing(tmp_path):
    code = f"""
from zoobot_core.encoders.hub import EncoderUnavailableError, encoder_folder
try:
    encoder_folder({NAME!r})
except EncoderUnavailableError as error:
    print(error)
"""
    with fake_hub(_repos()) as hub:
        result = _python(code, {"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    _check_message(result.stdout, "HF_HUB_OFFLINE", str(tmp_path / "hub"))
    assert hub.requests == []


def _encoder_dir(folder: Path, config: str | None = json.dumps(CONFIG), weights: str | None = "pytorch_model.bin") -> Path:
    folder.mkdir(parents=True)
    if config is not None:
        (folder / "config.json").write_text(config)
    if weights is not None:
        (folder / weights).write_bytes(WEIGHTS.read_bytes())
    return folder


def test_a_local_folder_is_taken_as_it_is(tmp_path):
    folder = _encoder_dir(tmp_path / "convnext_nano")
    assert encoder_folder(str(folder)) == folder and is_encoder_name(str(folder)) and read_config(folder) == CONFIG
    assert encoder_folder(str(_encoder_dir(tmp_path / "st", weights="model.safetensors"))) == tmp_path / "st"
    assert is_encoder_name(NAME) and is_encoder_name("hf-hub:someone/repo") and not is_encoder_name("none")
    assert not is_encoder_name(str(tmp_path / "absent")) and not is_encoder_name(str(_encoder_dir(tmp_path / "empty", None, None)))
    assert not is_encoder_name("")


def test_a_local_folder_that_is_not_an_encoder_says_what_it_lacks(tmp_path):
    cases = [(tmp_path / "absent", "is not a folder"),
             (_encoder_dir(tmp_path / "no_weights", weights=None), "lacks model.safetensors or pytorch_model.bin"),
             (_encoder_dir(tmp_path / "no_config", config=None), "lacks config.json"),
             (_encoder_dir(tmp_path / "nothing", config=None, weights=None), "lacks config.json and model.safetensors or pytorch_model.bin")]
    for folder, message in cases:
        with pytest.raises(EncoderUnavailableError, match=message) as error:
            encoder_folder(str(folder))
        assert str(folder) in str(error.value)


@pytest.mark.parametrize(("config", "message"), [("{not json", "not valid JSON"), ('["convnext_nano"]', "does not name an architecture"),
                                                 ('{"num_features": 640}', "does not name an architecture")])
def test_a_config_without_an_architecture_is_refused(tmp_path, config, message):
    folder = _encoder_dir(tmp_path / "bad", config=config)
    with pytest.raises(EncoderConfigError, match=message) as error:
        read_config(folder)
    assert str(folder / "config.json") in str(error.value)
    with pytest.raises(EncoderConfigError, match="does not exist"):
        read_config(tmp_path)


def test_hub_names(tmp_path):
    assert parse_hub_name(NAME) == (REPO_ID, None)
    assert parse_hub_name(f"{NAME}@refs/pr/1") == (REPO_ID, "refs/pr/1")
    assert parse_hub_name("hf-hub:mwalmsley/zoobot-encoder-convnext_nano") == ("mwalmsley/zoobot-encoder-convnext_nano", None)
    for bad in ("hf_hub:no-owner", "hf_hub:a/b/c", "hf_hub:/repo", f"{NAME}@", "hf_hub:some one/repo!", "convnext_nano"):
        with pytest.raises(EncoderUnavailableError, match="not a Hugging Face encoder name"):
            encoder_folder(bad, cache_dir=tmp_path) if bad.startswith("hf_hub:") else parse_hub_name(bad)


def test_a_reader_of_the_downloaded_weights_gets_the_torch_tensors(tmp_path):
    with fake_hub(_repos()) as hub:
        folder = encoder_folder(NAME, endpoint=hub.endpoint, cache_dir=tmp_path)
    expected = read_state_dict(WEIGHTS)
    state = read_state_dict(weights_file(folder))
    assert all(np.array_equal(state[name], expected[name]) for name in expected)


def test_a_job_only_reads_the_cache_and_says_so_when_this_machine_lacks_it(tmp_path):
    """download=False (a workflow job): no request, and an error saying the jobs' machine must see the same HF_HOME."""
    with fake_hub(_repos()) as hub:
        with pytest.raises(EncoderUnavailableError, match="only reads the Hugging Face cache.*HF_HOME to a folder both machines see"):
            encoder_folder(NAME, endpoint=hub.endpoint, cache_dir=tmp_path / "cache", download=False)
        assert hub.requests == []
        encoder_folder(NAME, endpoint=hub.endpoint, cache_dir=tmp_path / "cache")
    assert (encoder_folder(NAME, cache_dir=tmp_path / "cache", download=False) / "config.json").is_file()
