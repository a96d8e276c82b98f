"""``python -m toolkit eval`` on a saved tiny model: loads once, writes the suite JSON and plots, prints scores."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests.test_evals_fixtures import tiny_model, tiny_tokenizer
from toolkit.cli import main
from toolkit.evals.command import default_out


def _saved_model(folder: Path) -> Path:
    tiny_model().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def test_eval_command_on_a_saved_model(tmp_path: Path, capsys):
    model_dir = _saved_model(tmp_path / "model")
    suite = tmp_path / "s.yaml"
    suite.write_text("name: s\ntasks:\n  - {type: niah, lengths: [128], depths: [0.0, 1.0], samples: 2}\n"
                     "  - {type: perplexity, length: 128, bucket: 64, documents: 1}\n")
    out = tmp_path / "out"
    assert main(["eval", "--model", str(model_dir), "--suite", str(suite), "--out", str(out), "--device", "cpu"]) == 0
    data = json.loads((out / "s.json").read_text())
    assert (data["suite"], data["tag"], data["model"]) == ("s", "out", str(model_dir))
    assert set(data["tasks"]["niah"]["grid"]["128"]) == {"0.0", "1.0"}
    assert json.loads((out / "eval_info.json").read_text())["device"] == "cpu"
    assert (out / "s-niah.png").is_file() and (out / "s-perplexity.png").is_file()
    printed, said = capsys.readouterr()
    assert "attention: sdpa (" in said and "; device: cpu; float32" in said, said  # as train says it
    assert f"s/niah: score {data['tasks']['niah']['score']:.3f}" in printed
    assert f"perplexity {data['tasks']['perplexity']['perplexity']:.3f}" in printed


def test_out_holding_another_models_results_is_refused_and_the_same_model_resumes(tmp_path: Path, capsys,
                                                                                   monkeypatch) -> None:
    """A folder's results belong to the model in its eval_info.json: the same model (by another path) adds a suite
    and reuses what it recorded; another model is refused before it loads, every file kept."""
    import toolkit.model.loading

    model, copy = tmp_path / "model", tmp_path / "copy"
    for folder in (model, copy):
        tiny_model().save_pretrained(folder)
        tiny_tokenizer().save_pretrained(folder)
    (tmp_path / "link").symlink_to(model)
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("name: a\ntasks:\n  - {type: niah, lengths: [128], depths: [0.0], samples: 1}\n")
    second.write_text("name: b\ntasks:\n  - {type: niah, lengths: [128], depths: [1.0], samples: 1}\n")
    out = tmp_path / "out"
    argv = ["--out", str(out), "--device", "cpu"]
    assert main(["eval", "--model", str(model), "--suite", str(first), *argv]) == 0
    recorded = (out / "a.json").read_text()
    assert main(["eval", "--model", str(tmp_path / "link"), "--suite", str(first), "--suite", str(second), *argv]) == 0
    assert (out / "a.json").read_text().replace(str(tmp_path / "link"), str(model)) == recorded  # kept
    assert json.loads((out / "eval_info.json").read_text())["model"] == str(tmp_path / "link")
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    capsys.readouterr()
    monkeypatch.setattr(toolkit.model.loading, "load_merged", lambda *a, **k: pytest.fail("the model was loaded"))
    assert main(["eval", "--model", str(copy), "--suite", str(second), *argv]) == 2
    assert capsys.readouterr().err == (f"error: --out: {out} holds the results of {tmp_path / 'link'} "
                                       f"(eval_info.json), not of {copy}; name another --out, or remove the folder "
                                       "first\n")
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before


@pytest.mark.parametrize(("recorded", "given", "refused"), [
    (("{tmp}/final", "{tmp}/final"), ("{tmp}/final", None), None),  # a LoRA run's final/: its own adapter
    (("org/base", None), ("org/base", None), None),
    (("org/base", "{tmp}/final"), ("org/base", "{tmp}/final"), None),
    (("org/base", "{tmp}/final"), ("org/base", None), "org/base with the adapter {tmp}/final"),
    (("org/base", None), ("org/base", "{tmp}/final"), "org/base"),
    (("org/base", None), ("org/other", None), "org/base")])
def test_the_owner_of_an_eval_folder_is_its_model_and_adapter(recorded: tuple[str, str | None],
                                                              given: tuple[str, str | None], refused: str | None,
                                                              tmp_path: Path) -> None:
    from toolkit.errors import UserError
    from toolkit.evals.command import check_owner

    def filled(pair: tuple[str, str | None]) -> tuple[str, str | None]:
        return pair[0].format(tmp=tmp_path), pair[1] and pair[1].format(tmp=tmp_path)

    (tmp_path / "final").mkdir()
    model, adapter = filled(recorded)
    (tmp_path / "eval_info.json").write_text(json.dumps({"model": model, "adapter": adapter}))
    given_model, given_adapter = filled(given)
    if refused is None:
        check_owner(tmp_path, given_model, given_adapter)
        return
    with pytest.raises(UserError, match=f"holds the results of {refused.format(tmp=tmp_path)} \\(eval_info.json\\)"):
        check_owner(tmp_path, given_model, given_adapter)


def test_default_out_folder(tmp_path: Path):
    assert default_out("meta-llama/Meta-Llama-3-8B") == Path("eval-results/meta-llama--Meta-Llama-3-8B")
    (tmp_path / "final").mkdir()
    assert default_out(str(tmp_path / "final") + "/") == Path("eval-results/final")
    for run in ("a", "b"):  # two runs' final models and checkpoints: each its own results folder
        (tmp_path / run / "final").mkdir(parents=True)
        (tmp_path / run / "checkpoints" / "step-5").mkdir(parents=True)
        (tmp_path / run / "run_info.json").write_text("{}")
        assert default_out(str(tmp_path / run / "final")) == Path(f"eval-results/{run}-final")
        checkpoint = default_out(str(tmp_path / run / "checkpoints" / "step-5"))
        assert checkpoint == Path(f"eval-results/{run}-checkpoints-step-5")
    (tmp_path / "llama3").symlink_to(tmp_path / "a" / "final")  # a link named for its model keeps its name
    assert default_out(str(tmp_path / "llama3")) == Path("eval-results/llama3")


ROOT = Path(__file__).resolve().parents[1]


def test_max_length_leaves_out_longer_prompts() -> None:
    from toolkit.evals.api import capped
    from toolkit.evals.suite import load_suite

    grid = load_suite(Path(__file__).resolve().parents[1] / "evals" / "niah.yaml").tasks[0]
    kept = capped(grid, 16384)
    assert kept is not None and kept.lengths == [4096, 8192, 16384]
    assert capped(grid, None) is grid
    assert capped(grid, 1000) is None
    from toolkit.evals.jury import JuryTask
    from toolkit.evals.perplexity import PerplexityTask

    for path, kind in (("smollm2-heldout-32k.yaml", PerplexityTask), ("jury-example.yaml", JuryTask)):
        if kind is PerplexityTask and not (ROOT / "data" / "corpus").is_dir():
            continue  # its held-out text comes with `make corpus`
        task = next(t for t in load_suite(ROOT / "evals" / path).tasks if isinstance(t, kind) and t.length)
        assert isinstance(task, (PerplexityTask, JuryTask)) and task.length is not None
        assert capped(task, task.length) is task and capped(task, task.length - 1) is None


def test_an_adapter_folder_with_its_own_tokenizer_gives_the_tokenizer(tmp_path: Path) -> None:
    """``--adapter DIR`` (peft's folder: no config.json) with tokenizer files: its tokenizer is the one evaluated."""
    from peft import LoraConfig, get_peft_model

    from tests.test_evals_fixtures import tiny_model, tiny_tokenizer
    from toolkit.model.loading import eval_tokenizer

    base, adapter = tmp_path / "base", tmp_path / "adapter"
    tiny_model().save_pretrained(base)
    get_peft_model(tiny_model(), LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(str(adapter))
    tokenizer = tiny_tokenizer()
    tokenizer.add_tokens(["<only-in-the-adapter>"])
    tokenizer.save_pretrained(adapter)
    assert not (adapter / "config.json").exists()
    assert "<only-in-the-adapter>" in eval_tokenizer(str(base), str(adapter)).get_vocab()
    config = adapter / "adapter_config.json"  # given as the model, it names its base itself
    config.write_text(json.dumps({**json.loads(config.read_text()), "base_model_name_or_path": str(base)}))
    assert "<only-in-the-adapter>" in eval_tokenizer(str(adapter), None).get_vocab()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_keeps_the_finished_batches_and_the_same_command_continues(
        signum: signal.Signals, tmp_path: Path, capsys, monkeypatch) -> None:
    """SIGTERM, as Ctrl-C, ends ``eval`` in its second batch: exit 128 + the signal, one line saying what is kept;
    the same command scores only the prompts left."""
    from toolkit.evals.transformers_backend import TransformersBackend

    model = _saved_model(tmp_path / "model")
    suite = tmp_path / "s.yaml"
    suite.write_text("name: s\ntasks:\n  - {type: niah, lengths: [128], depths: [0.0, 0.5, 1.0], samples: 2, "
                     "batch_tokens: 256}\n")
    argv = ["eval", "--model", str(model), "--suite", str(suite), "--out", str(tmp_path / "out"), "--device", "cpu"]
    scored: list[int] = []
    pending = [signum]
    original = TransformersBackend.greedy_matches

    def greedy_matches(self, requests):
        scored.append(len(requests))
        if len(scored) == 2 and pending:
            signal.raise_signal(pending.pop())
        return original(self, requests)

    monkeypatch.setattr(TransformersBackend, "greedy_matches", greedy_matches)
    assert main(argv) == 128 + signum
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"stopped by {signum.name}: the results of the batches it finished are saved, and the same command continues "
        "from them")
    entry = json.loads((tmp_path / "out" / "s.json").read_text())["tasks"]["niah"]
    assert not entry["complete"] and len(entry["cells"]) == 2
    scored.clear()
    assert main(argv) == 0
    assert sum(scored) == 4 and json.loads((tmp_path / "out" / "s.json").read_text())["tasks"]["niah"]["complete"]
