"""Configuration: file < environment < flags, and clear errors."""

from __future__ import annotations

import pytest

from detector import ConfigError, DetectorConfig, load_config


def test_precedence_file_env_flags(tmp_path, monkeypatch):
    path = tmp_path / "hs.toml"
    path.write_text("[detector]\nthreshold = 0.99\nwarmup = 30\nclear_m = 4\n")
    monkeypatch.setenv("HIDDENSTATE_WARMUP", "40")
    monkeypatch.setenv("HIDDENSTATE_RAISE_K", "2")
    cfg = load_config(path, raise_k=4, threshold=None)
    assert cfg.threshold == 0.99  # file (flag left unset)
    assert cfg.warmup == 40  # env beats file
    assert cfg.raise_k == 4  # flag beats env
    assert cfg.clear_m == 4


def test_defaults_without_anything():
    assert load_config() == DetectorConfig()


@pytest.mark.parametrize(
    ("content", "match"),
    [("threshold = 2.0", "threshold"), ("raise_k = 9\nraise_n = 3", "raise_k"), ("bogus = 1", "bogus"), ("x = [", "TOML")],
)
def test_bad_settings_are_clear_errors(tmp_path, content, match):
    path = tmp_path / "bad.toml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=match):
        load_config(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
