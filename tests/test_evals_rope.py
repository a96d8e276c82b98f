"""Zero-shot RoPE comparison: each setting really applies during scoring, and the model's RoPE is restored."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.test_evals_fixtures import tiny_model, tiny_tokenizer
from toolkit.evals.api import run_suites


def test_rope_compare_applies_each_setting_and_restores(tmp_path: Path):
    suite = tmp_path / "r.yaml"
    suite.write_text("name: r\ntasks:\n  - type: rope_compare\n    lengths: [192, 256]\n    depths: [0.5]\n"
                     "    samples: 2\n    num_needles: 2\n    settings:\n      none: {type: default}\n"
                     "      linear: {type: linear, factor: 4.0}\n      ntk: {type: default, theta: auto}\n"
                     "      yarn: {type: yarn, factor: 4.0}\n")
    model, tok = tiny_model(max_positions=64), tiny_tokenizer()
    probe = torch.randint(3, 500, (1, 96))
    with torch.no_grad():
        before = model(probe).logits
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(dict(m.config.rope_parameters)))

    entry = run_suites(model, tok, [str(suite)], tmp_path, "base", "tiny")["r"]["tasks"]["rope_compare"]

    # one forward per (setting, length): both lengths' two prompts score under each setting in turn
    assert [p["rope_type"] for p in seen] == ["default"] * 2 + ["linear"] * 2 + ["default"] * 2 + ["yarn"] * 2
    assert seen[2]["factor"] == 4.0 and seen[6]["original_max_position_embeddings"] == 64
    assert seen[4]["rope_theta"] > 10000.0  # NTK-aware theta for 4x the native length
    assert seen[6]["rope_theta"] == 10000.0  # derived from the model's own theta, not the previous setting's
    assert model.config.rope_parameters == {"rope_type": "default", "rope_theta": 10000.0}
    assert model.config.max_position_embeddings == 64
    with torch.no_grad():
        assert torch.equal(model(probe).logits, before)
    assert set(entry["settings"]) == {"none", "linear", "ntk", "yarn"} and entry["native_length"] == 64
    for name, result in entry["settings"].items():
        cells = [c for c in entry["cells"] if c["setting"] == name]
        assert len(cells) == 4
        assert result["score"] == sum(c["correct"] for c in cells) / 4
    assert entry["best"] in entry["settings"] and entry["score"] is None
    assert (tmp_path / "base" / "r-rope_compare.png").is_file()


def test_cells_scored_under_the_rope_of_another_longest_length_are_scored_again(tmp_path: Path):
    """``theta: auto`` and a YaRN factor left out follow the longest length: a length added to the grid changes the
    RoPE every length is scored under, so the cells recorded before are not reused; an unchanged grid reuses all."""
    def suite(lengths: str) -> str:
        path = tmp_path / "r.yaml"
        path.write_text(f"name: r\ntasks:\n  - type: rope_compare\n    lengths: {lengths}\n    depths: [0.5]\n"
                        "    samples: 2\n    native_length: 64\n    settings:\n"
                        "      ntk: {type: default, theta: auto}\n      yarn: {type: yarn}\n")
        return str(path)

    model, tok = tiny_model(max_positions=64), tiny_tokenizer()
    scored: list[int] = []
    model.register_forward_pre_hook(lambda m, args, kwargs: scored.append(len(kwargs["input_ids"])), with_kwargs=True)

    first = run_suites(model, tok, [suite("[128]")], tmp_path, "base", "tiny")["r"]["tasks"]["rope_compare"]
    assert sum(scored) == 4 and first["settings"]["yarn"]["rope_parameters"]["factor"] == 2.0
    scored.clear()
    again = run_suites(model, tok, [suite("[128]")], tmp_path, "base", "tiny")["r"]["tasks"]["rope_compare"]
    assert sum(scored) == 0 and again["settings"] == first["settings"]
    longer = run_suites(model, tok, [suite("[128, 512]")], tmp_path, "base", "tiny")["r"]["tasks"]["rope_compare"]
    assert sum(scored) == 8  # both lengths, both settings, two prompts each
    assert longer["settings"]["yarn"]["rope_parameters"]["factor"] == 8.0
    assert {(c["setting"], c["length"], c["rope_length"]) for c in longer["cells"]} == {
        (name, length, 512) for name in ("ntk", "yarn") for length in (128, 512)}
