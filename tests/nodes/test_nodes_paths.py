"""Model folders: ComfyUI's layout and legacy names, flat folders, flag > env > config precedence, a
ComfyUI install's folders, containment, and messages that name the folders searched."""

from __future__ import annotations

from pathlib import Path

import pytest

from sd35.errors import UserInputError
from sd35.nodes.paths import ModelFolders, config_path, contained, read_config, resolve_locations


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_comfyui_layout_with_legacy_folder_names(tmp_path: Path) -> None:
    _touch(tmp_path / "text_encoders" / "t5.safetensors")
    _touch(tmp_path / "clip" / "clip_l.safetensors")
    _touch(tmp_path / "unet" / "dit.sft")
    _touch(tmp_path / "diffusion_models" / "old.ckpt")  # pickles are not offered
    folders = ModelFolders((tmp_path,))
    assert folders.list("text_encoders") == ["clip_l.safetensors", "t5.safetensors"]
    assert folders.list("diffusion_models") == ["dit.sft"]
    assert folders.list("checkpoints") == []
    assert folders.resolve("text_encoders", "clip_l.safetensors") == tmp_path / "clip" / "clip_l.safetensors"


def test_a_flat_folder_serves_every_kind(tmp_path: Path) -> None:
    _touch(tmp_path / "sd3.5_medium.safetensors")
    folders = ModelFolders((tmp_path,))
    assert folders.list("checkpoints") == folders.list("vae") == ["sd3.5_medium.safetensors"]


def test_missing_file_names_the_folders(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(UserInputError) as err:
        ModelFolders((tmp_path,)).resolve("checkpoints", "x.safetensors")
    assert (
        str(err.value) == f"model file 'x.safetensors' not found in checkpoints/ (looked in {tmp_path / 'checkpoints'})"
    )
    with pytest.raises(UserInputError, match="no models folder is set"):
        ModelFolders().resolve("vae", "x.safetensors")


def test_names_cannot_leave_their_folder(tmp_path: Path) -> None:
    assert contained(tmp_path, "a/b.png") == tmp_path / "a" / "b.png"
    for bad in ("../x", "/etc/passwd", "a/../../x", "", "a\\b"):
        assert contained(tmp_path, bad) is None, bad


def test_flag_beats_env_beats_config_and_comfyui_adds_its_folders(tmp_path: Path) -> None:
    flag, env_dir, conf_dir = (tmp_path / n for n in ("flag", "env", "conf"))
    comfy = tmp_path / "ComfyUI"
    for d in (flag, env_dir, conf_dir, comfy / "models", comfy / "input"):
        d.mkdir(parents=True)
    config = {"models": str(conf_dir), "folders": {"vae": [str(tmp_path / "extra_vae")]}}
    env = {"SD35_MODELS": str(env_dir)}
    assert resolve_locations([flag], env=env, config=config).models.roots == (flag,)
    assert resolve_locations([], env=env, config=config).models.roots == (env_dir,)
    located = resolve_locations([], env={}, config=config)
    assert located.models.roots == (conf_dir,) and located.models.extra["vae"] == (tmp_path / "extra_vae",)
    located = resolve_locations([flag], comfyui=comfy, env={}, config={})
    assert located.models.roots == (flag, comfy / "models") and located.input_dir == comfy / "input"
    located = resolve_locations([], env={"SD35_COMFYUI": str(comfy)}, config={})
    assert located.models.roots == (comfy / "models",)
    with pytest.raises(UserInputError, match="does not look like a ComfyUI install"):
        resolve_locations([], comfyui=tmp_path, env={}, config={})
    with pytest.raises(UserInputError, match="models folder not found"):
        resolve_locations([tmp_path / "missing"], env={}, config={})


def test_config_file_is_toml_at_the_xdg_place(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    path = config_path(env)
    assert path == tmp_path / "sd35" / "config.toml" and read_config(path) == {}
    path.parent.mkdir()
    path.write_text(f'models = ["{tmp_path}"]\noutput_dir = "{tmp_path / "out"}"\n')
    located = resolve_locations([], env=env)
    assert located.models.roots == (tmp_path,) and located.output_dir == tmp_path / "out"
    assert config_path({"SD35_CONFIG": "/x/y.toml"}) == Path("/x/y.toml")
    path.write_text("models = [")
    with pytest.raises(UserInputError, match="not valid TOML"):
        resolve_locations([], env=env)
