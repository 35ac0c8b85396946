"""The repository keeps its promises: contract signatures, dependency rules, pinned set-ups."""

import inspect
import pathlib
import re
import tomllib

import pytest

import attnkit
from attnkit.checks import CHECKS

ROOT = pathlib.Path(__file__).resolve().parents[1]

# The exercise contract of COURSE.md: name -> (parameter, default) in order.
E = inspect.Parameter.empty
CONTRACT = {
    "dot_product_scores": [("q", E), ("k", E)],
    "softmax": [("x", E), ("dim", -1)],
    "scaled_dot_product_attention": [("q", E), ("k", E), ("v", E), ("mask", None)],
    "causal_mask": [("n_q", E), ("n_k", E)],
    "padding_mask": [("lengths", E), ("n", E)],
    "split_heads": [("x", E), ("n_heads", E)],
    "merge_heads": [("x", E)],
    "multi_head_attention": [("x", E), ("w_q", E), ("w_k", E), ("w_v", E), ("w_o", E), ("n_heads", E), ("mask", None)],
    "sinusoidal_positions": [("n", E), ("d", E)],
    "apply_rope": [("x", E), ("positions", E), ("theta", 10000.0)],
    "alibi_bias": [("n_heads", E), ("n_q", E), ("n_k", E)],
    "decode_step": [("q_t", E), ("k_t", E), ("v_t", E), ("k_cache", E), ("v_cache", E)],
    "repeat_kv": [("x", E), ("n_rep", E)],
    "grouped_query_attention": [("q", E), ("k", E), ("v", E), ("is_causal", False)],
    "online_softmax": [("x", E), ("block_size", E)],
    "flash_attention_forward": [("q", E), ("k", E), ("v", E), ("is_causal", False), ("block_q", 64), ("block_k", 64)],
    "flash_attention_backward": [("q", E), ("k", E), ("v", E), ("out", E), ("lse", E), ("d_out", E), ("is_causal", False)],
    "sliding_window_mask": [("n_q", E), ("n_k", E), ("window", E)],
    "linear_attention": [("q", E), ("k", E), ("v", E), ("causal", False)],
    "triton_softmax": [("x", E)],
    "triton_flash_forward": [("q", E), ("k", E), ("v", E), ("is_causal", False)],
    "paged_attention": [("q", E), ("k_pages", E), ("v_pages", E), ("block_table", E), ("seq_lens", E)],
    "mla_scores": [("q_nope", E), ("c_kv", E), ("w_uk", E)],
    "sink_attention": [("q", E), ("k", E), ("v", E), ("sinks", E), ("is_causal", False)],
    "yarn_inv_freq": [("d", E), ("theta", E), ("scale", E), ("original_max_position", E), ("beta_fast", 32.0),
                      ("beta_slow", 1.0)],
    "flash_decode": [("q", E), ("k", E), ("v", E), ("n_splits", E)],
    "gated_delta_rule": [("q", E), ("k", E), ("v", E), ("beta", E), ("g", E), ("initial_state", None)],
    "train_model": [("model", E), ("batches", E), ("eval_tokens", E)],  # the rest keyword-only (notebook 07)
}



@pytest.mark.parametrize("name", CONTRACT)
def test_contract_signature(name):
    params = [p for p in inspect.signature(getattr(attnkit, name)).parameters.values()
              if p.kind is not p.KEYWORD_ONLY]  # extras must be keyword-only
    assert [(p.name, p.default) for p in params] == CONTRACT[name]
    assert name in attnkit.__all__ and name in CHECKS


def test_rope_half_split_is_a_documented_keyword():
    p = inspect.signature(attnkit.apply_rope).parameters["pairing"]
    assert p.kind is p.KEYWORD_ONLY and p.default == "interleaved"
    assert "half" in attnkit.apply_rope.__doc__ and "NeoX" in attnkit.apply_rope.__doc__


def _requirements():
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return [l.split("#")[0].strip() for l in lines if l.split("#")[0].strip()]


def test_install_requirements_do_not_name_torch_or_triton():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + [d for ds in project.get("optional-dependencies", {}).values() for d in ds]
    names = {re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0].lower() for d in deps}
    assert not names & {"torch", "triton", "pytorch"}


def test_requirements_pin_the_stack_and_install_the_project():
    reqs = _requirements()
    assert "torch==2.13.0" in reqs and "triton==3.7.1" in reqs and "-e ." in reqs
    pinned = {r.split("==")[0].lower() for r in reqs if "==" in r}
    for needed in ("numpy", "matplotlib", "ipywidgets", "jupyterlab", "nbgrader", "nbclient", "pytest",
                   "hypothesis", "tqdm"):
        assert needed in pinned, needed
    assert next(r for r in reqs if r.startswith("nbgrader")) == "nbgrader==0.9.6"
    ipyw = next(r for r in reqs if r.startswith("ipywidgets=="))
    major, minor = map(int, ipyw.split("==")[1].split(".")[:2])
    assert (7, 7) <= (major, minor) < (9, 0)


def test_environment_yml_has_the_same_pins():
    env = (ROOT / "environment.yml").read_text()
    pip_lines = [l.strip()[2:].strip() for l in env.splitlines() if l.strip().startswith("- ") and ("==" in l or "-e ." in l)]
    pip_lines = [l for l in pip_lines if not l.startswith("python=")]
    assert sorted(pip_lines) == sorted(_requirements())


def test_ci_script_installs_and_runs_pytest():
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"pip install (-q )?-r requirements.txt", ci)
    assert "pytest" in ci and "OMP_NUM_THREADS=1" in ci


def test_layout():
    for path in ("attnkit", "solutions", "notebooks", "grader", "tests", "environment.yml", "README.md",
                 "pyproject.toml", ".ci/run"):
        assert (ROOT / path).exists(), path
