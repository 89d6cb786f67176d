"""Where an encoder's files come from: a Hugging Face repo (`hf_hub:<owner>/<repo>[@<revision>]`, through the
Hugging Face cache) or a local folder holding config.json and a weights file.

A repo already in the cache is used without touching the network; otherwise it is downloaded once into the cache
(HF_HOME / HF_HUB_CACHE and HF_ENDPOINT are honoured as huggingface_hub honours them). A machine that can neither
find nor fetch the files gets an EncoderUnavailableError saying which files to fetch, with which command, and where
to put them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from zoobot_core.encoders.weights import WEIGHT_FILES, weights_file

log = logging.getLogger(__name__)

HF_PREFIX = "hf_hub:"
HF_PREFIXES = (HF_PREFIX, "hf-hub:")  # Zoobot writes hf_hub:, timm's docs hf-hub:
CONFIG_FILE = "config.json"
PUBLISHED_WEIGHTS = "pytorch_model.bin"  # what Zoobot's repos hold on their main branch
CONFIG_KEYS = "finetune.base_model / representations.encoder"


class EncoderUnavailableError(ValueError):
    """An encoder's files are neither here nor downloadable (or the name is not an encoder)."""


class EncoderConfigError(EncoderUnavailableError):
    """An encoder folder's config.json is unreadable or does not name an architecture."""


def is_encoder_name(name: str) -> bool:
    """Whether `name` names an encoder: a hf_hub: repo, or a folder holding config.json."""
    return name.startswith(HF_PREFIXES) or (bool(name) and (Path(name).expanduser() / CONFIG_FILE).is_file())


def parse_hub_name(name: str) -> tuple[str, str | None]:
    """(repo id, revision or None) of `hf_hub:<owner>/<repo>[@<revision>]`."""
    prefix = next((p for p in HF_PREFIXES if name.startswith(p)), None)
    if prefix is None:
        raise EncoderUnavailableError(f"{name!r} is not a Hugging Face encoder name: expected {HF_PREFIX}<owner>/<repo>[@<revision>]")
    repo, at, revision = name[len(prefix):].partition("@")
    owner, _, repo_name = repo.partition("/")
    if not owner or not repo_name or "/" in repo_name or (at and not revision):
        raise EncoderUnavailableError(f"{name!r} is not a Hugging Face encoder name: expected {HF_PREFIX}<owner>/<repo>[@<revision>]")
    return repo, revision or None


def encoder_folder(name: str, endpoint: str | None = None, cache_dir: str | Path | None = None, download: bool = True) -> Path:
    """The folder holding the encoder's config.json and weights: a local folder as given, or a repo's snapshot in the HF cache.

    A hf_hub: repo is looked up in the cache first (no network); only if it is missing is it downloaded, from `endpoint`
    (default: HF_ENDPOINT, else huggingface.co) into `cache_dir` (default: HF_HUB_CACHE, else $HF_HOME/hub).
    `download=False` (a workflow job: the workflow fetched the files when it started) only reads the cache.
    """
    if name.startswith(HF_PREFIXES):
        repo, revision = parse_hub_name(name)
        return _hub_folder(name, repo, revision, endpoint, cache_dir, download)
    return _local_folder(name)


def read_config(folder: Path) -> dict[str, Any]:
    """An encoder folder's config.json, which must be a JSON object naming its timm "architecture"."""
    path = Path(folder) / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise EncoderConfigError(f"{path} does not exist: an encoder folder needs the config.json of its Hugging Face repo") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise EncoderConfigError(f"{path} is not valid JSON ({error}); fetch the repo's config.json again") from error
    if not isinstance(config, dict) or not isinstance(config.get("architecture"), str):
        raise EncoderConfigError(f'{path} does not name an architecture: expected a JSON object with "architecture", e.g. "convnext_nano"')
    return config


def _local_folder(name: str) -> Path:
    folder = Path(name).expanduser()
    hint = f"A local encoder is a folder holding {CONFIG_FILE} and {' or '.join(WEIGHT_FILES)} (the files of a {HF_PREFIX} repo)."
    if not folder.is_dir():
        raise EncoderUnavailableError(f"Encoder {name!r}: {folder} is not a folder. {hint} For a Hugging Face repo write {HF_PREFIX}<owner>/<repo>.")
    missing = [CONFIG_FILE] if not (folder / CONFIG_FILE).is_file() else []
    try:
        weights_file(folder)
    except FileNotFoundError:
        missing.append(" or ".join(WEIGHT_FILES))
    if missing:
        raise EncoderUnavailableError(f"Encoder folder {folder} lacks {' and '.join(missing)}. {hint}")
    return folder


def _hub_folder(name: str, repo: str, revision: str | None, endpoint: str | None, cache_dir: str | Path | None, download: bool = True) -> Path:
    from huggingface_hub import constants, is_offline_mode
    from huggingface_hub.errors import HFValidationError

    try:
        cached = _cached_folder(repo, revision, cache_dir)
    except HFValidationError as error:
        raise EncoderUnavailableError(f"{name!r} is not a Hugging Face encoder name: {error}") from error
    if cached is not None:
        log.debug("Encoder %s found in the Hugging Face cache: %s", name, cached)
        return cached
    cache = Path(cache_dir or constants.HF_HUB_CACHE).expanduser()
    source = (endpoint or constants.ENDPOINT).rstrip("/")
    if not download:
        raise _unavailable(name, repo, revision, cache, "a workflow job only reads the Hugging Face cache (the workflow fetches the files when it "
                           "starts, on the machine that submits the jobs), and this machine's cache does not hold them: set HF_HOME to a folder "
                           "both machines see")
    if is_offline_mode():
        raise _unavailable(name, repo, revision, cache, "HF_HUB_OFFLINE is set, so nothing is downloaded")
    _check_reachable(name, repo, revision, endpoint, cache, source)
    log.info("Downloading encoder %s from %s into the Hugging Face cache %s", name, source, cache)
    folder = _download(name, repo, revision, endpoint, cache_dir, cache, source)
    log.info("Encoder %s downloaded: %s", name, folder)
    return folder


def _cached_folder(repo: str, revision: str | None, cache_dir: str | Path | None) -> Path | None:
    """The cached snapshot holding config.json and a weights file, without any request; None if either is missing."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        config = Path(hf_hub_download(repo, CONFIG_FILE, revision=revision, cache_dir=cache_dir, local_files_only=True))
    except EntryNotFoundError:
        return None
    for weights in WEIGHT_FILES:
        try:
            hf_hub_download(repo, weights, revision=revision, cache_dir=cache_dir, local_files_only=True)
        except EntryNotFoundError:
            continue
        return config.parent
    return None


def _http_error() -> type[Exception]:
    """The HTTP client's base error: huggingface_hub 2 uses httpx2, 1.x httpx."""
    try:
        import httpx2 as client
    except ImportError:
        import httpx as client
    return client.HTTPError


def _check_reachable(name: str, repo: str, revision: str | None, endpoint: str | None, cache: Path, source: str) -> None:
    """One request for config.json's metadata, without retries: an offline machine learns it at once, not after
    huggingface_hub's retries (about 23 s per file when the connection is refused, minutes when it hangs)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError, RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    url = hf_hub_url(repo, CONFIG_FILE, revision=revision, endpoint=endpoint)
    try:
        metadata = get_hf_file_metadata(url, endpoint=endpoint)
    except RepositoryNotFoundError as error:
        raise _unavailable(name, repo, revision, cache, f"{source} has no repo {repo} (or it is private or gated)") from error
    except RevisionNotFoundError as error:
        raise _unavailable(name, repo, revision, cache, f"{repo} has no revision {revision}") from error
    except RemoteEntryNotFoundError as error:
        raise _unavailable(name, repo, revision, cache, f"{repo} has no {CONFIG_FILE}, so it is not a timm encoder repo") from error
    except (HfHubHTTPError, _http_error(), OSError) as error:
        raise _unavailable(name, repo, revision, cache, f"{source} cannot be reached ({type(error).__name__}: {error})") from error
    if metadata.commit_hash is None:
        raise _unavailable(name, repo, revision, cache, f"{source} answered without an X-Repo-Commit header: it is not a Hugging Face Hub (check HF_ENDPOINT)")


def _download(name: str, repo: str, revision: str | None, endpoint: str | None, cache_dir: str | Path | None, cache: Path, source: str) -> Path:
    """config.json and the first weights file the repo has, into the cache: the snapshot folder."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RemoteEntryNotFoundError

    def fetch(filename: str) -> Path:
        return Path(hf_hub_download(repo, filename, revision=revision, cache_dir=cache_dir, endpoint=endpoint))

    try:
        config = fetch(CONFIG_FILE)
        for weights in WEIGHT_FILES:
            try:
                fetch(weights)
            except RemoteEntryNotFoundError:  # the usual case for model.safetensors: Zoobot's repos hold pytorch_model.bin
                log.debug("%s has no %s", repo, weights)
                continue
            return config.parent
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as error:
        raise _unavailable(name, repo, revision, cache, f"downloading from {source} failed ({type(error).__name__}: {error})") from error
    raise _unavailable(name, repo, revision, cache, f"{repo} has neither {' nor '.join(WEIGHT_FILES)}")


def _unavailable(name: str, repo: str, revision: str | None, cache: Path, reason: str) -> EncoderUnavailableError:
    """The error for a repo neither cached nor downloadable: what is needed, the command that fetches it, where to put it."""
    at = f" --revision {revision}" if revision else ""
    return EncoderUnavailableError(
        f"Encoder {name} is not available: {reason}.\n"
        f"It needs {CONFIG_FILE} and {PUBLISHED_WEIGHTS} (or model.safetensors) of the Hugging Face repo {repo}"
        f"{f' at revision {revision}' if revision else ''}, which are not in the Hugging Face cache {cache}.\n"
        f"On a machine with internet, fetch them with\n"
        f"    hf download {repo} {CONFIG_FILE} {PUBLISHED_WEIGHTS}{at}\n"
        f"and then either set HF_HOME on this machine to a shared folder holding that cache (the command writes to $HF_HOME/hub), "
        f"or add --local-dir <folder> to the command, copy that folder here and set {CONFIG_KEYS} to the folder."
    )
