"""manifest.json as a typed contract: what sa-export writes reads back equal, the layout written
before the records were typed still reads (and writes back byte for byte), and a corrupt manifest
is refused when the folder is opened, the message naming the field and the fix."""

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from stable_audio_rt.manifest import (
    MANIFEST,
    EngineFolderError,
    FileRecord,
    Manifest,
    PlanRecord,
    Verification,
    VerificationSkipped,
)
from stable_audio_rt.models.io_spec import TensorSpec

DATA = Path(__file__).parent.parent / "data"
# Written by sa-export before the manifest was typed (commit acf9ef9), from the tiny model: fp32
# t5 + vae_decoder with stand-in TensorRT plans; an fp16 vae_decoder with Snake plugin nodes.
WITH_PLANS = DATA / "manifest_v1_with_plans.json"
PLUGINS = DATA / "manifest_v1_plugins.json"


def _folder(tmp_path: Path, data: dict | None = None, source: Path | None = None) -> Path:
    if source is not None:
        shutil.copy(source, tmp_path / MANIFEST)
    else:
        (tmp_path / MANIFEST).write_text(json.dumps(data, indent=2))
    return tmp_path


def test_an_exported_manifest_reads_back_equal(engines, tmp_path):
    folder, exported = engines["fp16"]
    assert Manifest.read(folder) == exported
    plan = PlanRecord("dit.plan", "ab" * 32, 123, "10.9.0", "NVIDIA H200", "9.0")
    edited = replace(exported, components={**exported.components})
    edited.components["dit"] = replace(exported.components["dit"], engine=plan)
    edited.write(tmp_path)
    again = Manifest.read(tmp_path)
    assert again == edited and again.components["dit"].engine == plan
    assert json.loads((tmp_path / MANIFEST).read_text())["components"]["t5"]["engine"] == {}


def test_the_layout_written_before_the_typed_records_reads_and_writes_back_unchanged(tmp_path):
    manifest = Manifest.read(_folder(tmp_path, source=WITH_PLANS))
    decoder = manifest.components["vae_decoder"]
    assert decoder.batch == (1, 2, 2) and decoder.frames == (1, 16, 64)
    assert decoder.inputs == (TensorSpec("latents", ("batch", 8, "frames"), "float"),)
    assert decoder.outputs == (TensorSpec("audio", ("batch", 2, "samples"), "float"),)
    onnx_sha256 = "065cab67602ffca79656b1e3df2ecd84f57c654ee8b5c632cc62012aed18025a"
    assert decoder.files == {"vae_decoder.onnx": FileRecord(onnx_sha256, 5252701)}
    assert isinstance(decoder.verification, Verification) and decoder.verification.passed
    assert decoder.verification.input_shapes == {"latents": (2, 8, 7)}
    assert decoder.engine == PlanRecord(
        file="vae_decoder.plan",
        sha256="a907802247b85da29341bfddb8d94ef8c84ec006469d6bb2ea09b58bbe444c86",
        bytes=242,
        tensorrt="0.0.0+contract-stand-in",
        gpu="Stand-in GPU",
        compute_capability="9.0",
    )
    assert [s.kind for s in manifest.components["t5"].inputs] == ["int64", "int64"]
    manifest.write(tmp_path)
    assert (tmp_path / MANIFEST).read_text() == WITH_PLANS.read_text()


def test_the_old_layout_without_a_plan_and_with_a_skipped_check_reads_and_writes_back_unchanged(tmp_path):
    decoder = Manifest.read(_folder(tmp_path, source=PLUGINS)).components["vae_decoder"]
    assert decoder.engine is None and decoder.plugins == ["stable_audio_rt::snake"]
    assert decoder.verification == VerificationSkipped(
        "TensorRT plugin nodes: onnxruntime cannot run them; TensorRT builds check them"
    )
    Manifest.read(tmp_path).write(tmp_path)
    assert (tmp_path / MANIFEST).read_text() == PLUGINS.read_text()


def _delete(*keys):
    def edit(data):
        *parents, last = keys
        for key in parents:
            data = data[key]
        del data[last]

    return edit


def _set(*keys, value):
    def edit(data):
        *parents, last = keys
        for key in parents:
            data = data[key]
        data[last] = value

    return edit


DECODER = ("components", "vae_decoder")


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (_delete(*DECODER, "precision"), r"components\.vae_decoder\.precision is missing"),
        (
            _set(*DECODER, "inputs", 0, "axes", value=3),
            r"components\.vae_decoder\.inputs\[0\]\.axes must be a list of axis names and sizes, got 3",
        ),
        (
            _set("components", "t5", "inputs", 1, "kind", value="int8"),
            r"components\.t5\.inputs\[1\]\.kind must be an element kind \(float, float32, int64\), "
            r'got "int8"',
        ),
        (
            _set(*DECODER, "outputs", 0, "axes", 2, value="time"),
            r"components\.vae_decoder\.outputs\[0\]\.axes\[2\] must be an axis name "
            r'\(batch, frames, samples\) or a size, got "time"',
        ),
        (
            _delete(*DECODER, "files", "vae_decoder.onnx", "sha256"),
            r'components\.vae_decoder\.files\["vae_decoder\.onnx"\]\.sha256 is missing',
        ),
        (
            _set(*DECODER, "files", "vae_decoder.onnx", "bytes", value=True),
            r'components\.vae_decoder\.files\["vae_decoder\.onnx"\]\.bytes must be an integer, got true',
        ),
        (
            _set(*DECODER, "batch", value=[1, 2]),
            r"components\.vae_decoder\.batch must be \[min, opt, max\] as three integers, got \[1, 2\]",
        ),
        (_delete(*DECODER, "engine", "gpu"), r"components\.vae_decoder\.engine\.gpu is missing"),
        (
            _set(*DECODER, "verification", "max_rel", value="small"),
            r'components\.vae_decoder\.verification\.max_rel must be a number, got "small"',
        ),
        (
            _set(*DECODER, "verification", "max_rel", value=0.5),
            r"components\.vae_decoder\.verification\.status is 'passed', its numbers say 'failed'",
        ),
        (
            _set(*DECODER, "precison", value="fp16"),
            r"components\.vae_decoder\.precison is not a field this version reads",
        ),
        (_delete("source"), r": source is missing"),
        (_set("tools", "onnx", value=1.23), r"tools\.onnx must be a version string, got 1\.23"),
        (_delete("config", "dit"), r"config is not a model configuration \(KeyError: 'dit'\)"),
        (
            _set("config", "vae", "latent_dim", value=16),
            r"config is not a model configuration \(ConfigError: DiT io_channels \d+ != VAE latent_dim 16\); "
            r"rebuild with `sa-export`",
        ),
        (
            _set(*DECODER, "file", value="../other/vae_decoder.onnx"),
            r"components\.vae_decoder\.file must be a file of the folder, without a path",
        ),
        (
            _set(*DECODER, "files", "/etc/passwd", value={"sha256": "0" * 64, "bytes": 1}),
            r'components\.vae_decoder\.files\["/etc/passwd"\] must be a file of the folder',
        ),
        (
            _set(*DECODER, "file", value="t5.onnx"),
            r"components\.vae_decoder\.file \(t5\.onnx\) is not among components\.vae_decoder\.files",
        ),
        # Both were a StopIteration traceback where a folder's components are named (export_again).
        (_set("components", value={}), r"components is empty: an export writes at least one of t5, dit"),
        (
            _set("components", "unet", value={}),
            r'components\.unet must be one of t5, dit, vae_decoder, vae_encoder, got "unet"',
        ),
    ],
    ids=[
        "missing-key",
        "axes-not-a-list",
        "unknown-kind",
        "unknown-axis",
        "file-without-sha256",
        "bool-as-size",
        "short-range",
        "plan-without-gpu",
        "number-as-text",
        "edited-status",
        "unknown-field",
        "missing-top-level-key",
        "tool-version-type",
        "broken-config",
        "config-at-odds-with-itself",
        "file-outside-the-folder",
        "files-outside-the-folder",
        "file-not-recorded",
        "no-components",
        "unknown-component",
    ],
)
def test_a_corrupt_manifest_is_refused_at_read_naming_the_field(tmp_path, corrupt, message):
    data = json.loads(WITH_PLANS.read_text())
    corrupt(data)
    folder = _folder(tmp_path, data)
    with pytest.raises(EngineFolderError) as error:
        Manifest.read(folder)
    text = str(error.value)
    assert text.startswith(f"{folder / MANIFEST}: ") and text.endswith("; rebuild with `sa-export`")
    assert re.search(message, text), text
