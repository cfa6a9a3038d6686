"""A Hub repo id is fetched in the layout its config files show: the diffusers files where the
repo has model_index.json (SAO 1.0), the single file where it has only model_config.json (SAO
Small). snapshot_download is replaced by a stand-in serving files from a local folder."""

import fnmatch
import shutil

import pytest

from stable_audio_rt.models.checkpoint import locate_checkpoint


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    repos, fetched = {}, []

    def snapshot_download(repo_id, allow_patterns, token=None):
        served = tmp_path / "served" / repo_id.replace("/", "--") / str(len(fetched))
        source = repos[repo_id]
        for path in source.rglob("*"):
            rel = path.relative_to(source).as_posix()
            if path.is_file() and any(fnmatch.fnmatch(rel, p) for p in allow_patterns):
                (served / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, served / rel)
        fetched.append(
            (repo_id, sorted(p.relative_to(served).as_posix() for p in served.rglob("*") if p.is_file()))
        )
        return str(served)

    monkeypatch.setattr("huggingface_hub.snapshot_download", snapshot_download)
    return repos, fetched


def test_single_file_repo_is_fetched_as_a_single_file(fake_hub, tiny_single_file_dir):
    repos, fetched = fake_hub
    repos["org/small"] = tiny_single_file_dir
    location = locate_checkpoint("org/small")
    assert location.layout == "single_file"
    assert "model.safetensors" in fetched[-1][1]


def test_diffusers_repo_is_fetched_in_the_diffusers_layout(fake_hub, tiny_diffusers_dir):
    repos, fetched = fake_hub
    repos["org/one"] = tiny_diffusers_dir
    location = locate_checkpoint("org/one")
    assert location.layout == "diffusers"
    assert any(f.startswith("transformer/") for f in fetched[-1][1])
