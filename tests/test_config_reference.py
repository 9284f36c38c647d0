"""docs/config.md names every key of the defaults and of every config file, and no other, with
their values."""

import os
import re
import runpy
import shutil

import pytest

from aci_jax import config_reference
from aci_jax.configuration import defaults

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")
PAGE = os.path.join(ROOT, "docs", "config.md")
ROW = re.compile(r"^\| `([\w.]+)` \| .*\|$")


def _config_keys(config, prefix=""):
  """Dotted keys of a ConfigDict, walked here rather than with the module under test."""
  keys = {}
  for k in config.keys():
    v = config[k]
    if hasattr(v, "keys") and not isinstance(v, dict) and list(v.keys()):
      keys.update(_config_keys(v, f"{prefix}{k}."))
    else:
      keys[prefix + k] = v
  return keys


def _all_configs():
  out = {"defaults": [defaults()],
         "default.py": [runpy.run_path(os.path.join(CONFIGS, "default.py"))["get_config"]()],
         "sft_toy.py": [runpy.run_path(os.path.join(CONFIGS, "sft_toy.py"))["get_config"]()]}
  paper = runpy.run_path(os.path.join(CONFIGS, "paper.py"))
  out["paper.py"] = [paper["get_config"](name) for name in paper["MODELS"]]
  return out


def _page_rows():
  rows = {}
  with open(PAGE, encoding="utf-8") as f:
    for line in f:
      m = ROW.match(line.strip())
      if m:
        assert m.group(1) not in rows, f"docs/config.md lists {m.group(1)} twice"
        rows[m.group(1)] = [c.strip() for c in line.strip().strip("|").split(" | ")]
  return rows


def test_page_lists_exactly_the_keys_of_the_config_files():
  keys = set()
  for configs in _all_configs().values():
    for c in configs:
      keys |= set(_config_keys(c))
  rows = _page_rows()
  assert not keys - set(rows), f"keys missing from docs/config.md: {sorted(keys - set(rows))}"
  assert not set(rows) - keys, f"docs/config.md names keys no config has: " \
                               f"{sorted(set(rows) - keys)}"


def test_page_shows_the_default_config_values():
  # Columns: key, meaning, defaults, default.py, sft_toy.py, paper.py.
  rows = _page_rows()
  for column, title in ((2, "defaults"), (3, "default.py")):
    (config,) = _all_configs()[title]
    checked = 0
    for key, value in _config_keys(config).items():
      if isinstance(value, (bool, int)) or (isinstance(value, str) and value):
        assert rows[key][column] == f"`{value!r}`", (title, key, rows[key][column])
        checked += 1
    assert checked > 40, title


def test_page_is_what_the_generator_writes_now():
  assert config_reference.main(["--configs", CONFIGS, "--check", PAGE]) == 0, (
      "docs/config.md is out of date: python -m aci_jax.config_reference --out docs/config.md")


@pytest.fixture
def configs_copy(tmp_path):
  out = tmp_path / "configs"
  shutil.copytree(CONFIGS, out)
  return out


def test_a_new_key_without_a_meaning_is_an_error(configs_copy, capsys):
  path = configs_copy / "default.py"
  text = path.read_text()
  assert "  c = defaults()\n" in text
  path.write_text(text.replace("  c = defaults()\n", "  c = defaults()\n  c.brand_new_key = 1\n"))
  assert config_reference.main(["--configs", str(configs_copy), "--check", PAGE]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and "brand_new_key" in err and len(err.splitlines()) == 1


def test_a_changed_value_makes_the_page_out_of_date(configs_copy, capsys):
  path = configs_copy / "sft_toy.py"
  text = path.read_text()
  assert "lr=3e-3," in text
  path.write_text(text.replace("lr=3e-3,", "lr=7e-3,"))
  assert config_reference.main(["--configs", str(configs_copy), "--check", PAGE]) == 1
  assert "out of date" in capsys.readouterr().err
  page = config_reference.render(config_reference.load_configs(str(configs_copy)))
  (row,) = [ln for ln in page.splitlines() if ln.startswith("| `optim.lr` |")]
  assert "`0.007`" in row
