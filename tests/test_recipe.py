"""Recipe errors: one line naming the key or file, exit code 2, nothing written — for every bad input
issue 9 found accepted or crashing (table BAD / BAD_TEXT / BAD_FOLDERS below)."""

from __future__ import annotations

import gzip
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from recipe_mutations import REFUSED_WITHIN

from ptq_bench.cli import main
from ptq_bench.errors import RecipeError
from ptq_bench.recipe import expand_cells, load_recipe
from ptq_bench.sources import PACKAGED, packaged_file

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "recipes" / "smoke.yaml"
DATA = Path(os.environ["PTQ_BENCH_DATA"]).resolve()


def smoke(tmp_path: Path) -> dict:
    raw = yaml.safe_load(SMOKE.read_text())
    raw["output_dir"] = str(tmp_path / "out")
    raw["cache_dir"] = str(tmp_path / "cache")
    return raw


def write(tmp_path: Path, mutate) -> Path:
    raw = smoke(tmp_path)
    mutate(raw)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def assert_refused(path: Path, capsys, needle: str, commands=("validate", "run")) -> str:
    """Each command exits 2 at once (before any model is built or trained: under REFUSED_WITHIN s, room for a
    first transformers import on a loaded 2-core host) with one line (< 300 chars) containing `needle`;
    nothing written."""
    before = files_under(path.parent)
    for cmd in commands:
        t0 = time.perf_counter()
        assert main([cmd, str(path)]) == 2
        assert time.perf_counter() - t0 < REFUSED_WITHIN
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and len(err) < 300, err[:400]
        assert needle in err, err
    assert files_under(path.parent) == before
    return err


def missing_packaged(path: Path) -> list[str]:
    """Packaged `source:` names a recipe uses whose package is not installed here (e.g. CI without
    `make smollm2`)."""
    text = path.read_text()
    missing = []
    for name in PACKAGED:
        if f"source: {name}" in text:
            try:
                packaged_file(name)
            except RecipeError:
                missing.append(name)
    return missing


def test_shipped_recipes_validate(capsys):
    """Every shipped recipe validates; one that needs an optional packaged model that is not installed is
    refused with the one line that says how to install it (and nothing else wrong)."""
    for path in sorted((ROOT / "recipes").glob("*.yaml")):
        missing = missing_packaged(path)
        code = main(["validate", str(path)])
        err = capsys.readouterr().err.strip()
        if missing:
            assert code == 2 and err.count("\n") == 0 and PACKAGED[missing[0]].dist in err, (path, err)
        else:
            assert code == 0, (path, err)


def test_expand_cells_zips_bit_lists(tmp_path):
    def mutate(r):
        r["quantize"] = [{"method": "absmax", "w_bits": [8, 4, 1], "a_bits": [8, 4, 8]}]

    cells = expand_cells(load_recipe(write(tmp_path, mutate)))
    labels = [c.label for c in cells if c.method != "none"]
    assert labels == ["absmax W8A8", "absmax W4A4", "absmax W1A8"]


def test_a_granularity_reaches_only_quantized_activation_cells(tmp_path, capsys):
    """An a_bits sweep with a per-tensor activation scale: its a_bits 16 cell has no activation scales, so its
    row and cell id carry the default (it is the W8A16 cell of any other sweep); with no quantized activations at
    all (a_bits 16, or a list of only 16s) it is refused."""
    def sweep(r):
        r["quantize"] = [{"method": "absmax", "w_bits": 8, "a_bits": [8, 16], "a_granularity": "tensor"},
                         {"method": "absmax", "w_bits": 8}]

    cells = [c for c in expand_cells(load_recipe(write(tmp_path, sweep))) if c.method != "none"]
    assert [(c.config.a_bits, c.config.a_granularity) for c in cells] == [(8, "tensor"), (16, "token")]

    for a_bits in (16, [16, 16]):
        unquantized = _set("quantize", [{"method": "smoothquant", "a_bits": a_bits, "a_granularity": "tensor"}])
        assert_refused(write(tmp_path, unquantized), capsys, "a_granularity 'tensor' needs a_bits below 16")


def _set(*keys_and_value):
    """A mutation that sets r[k1][k2]...[kn] = value (list indices allowed)."""
    *keys, value = keys_and_value

    def mutate(r):
        node = r
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value

    return mutate


def _quant(entry: dict):
    return lambda r: r["quantize"].__setitem__(0, entry)


BAD = {
    # structure and names (kept from before)
    "unknown top-level key": (_set("epochs", 3), "epochs: unknown key"),
    "unknown nested key": (_set("train", "lr", 1), "train.lr: unknown key"),
    "wrong type": (_set("eval", "limit", "ten"), "eval.limit: expected an integer"),
    "unknown method": (lambda r: r["quantize"].append({"method": "awq"}), "unknown method 'awq'"),
    "unknown task": (_set("eval", "tasks", ["mmlu"]), "eval.tasks[0]: expected one of"),
    "quantize {}": (_set("quantize", {}), "quantize: expected a list of entries"),
    "quantize false": (_set("quantize", False), "quantize: expected a list of entries"),
    "quantize 0": (_set("quantize", 0), "quantize: expected a list of entries"),
    "bits out of range": (_quant({"method": "absmax", "w_bits": 9}), "quantize[0].w_bits: expected one of"),
    "unknown method key": (_set("quantize", 0, "alpha", 0.5), "quantize[0].alpha: unknown key"),
    "missing data folder": (_set("data_dir", "/nonexistent/data"), "/nonexistent/data"),
    "unknown model kind": (_set("models", "fp16", "kind", "fp8"), "models.fp16.kind: expected one of"),
    "unknown model in quantize": (_set("quantize", 0, "models", ["gpt5"]), "unknown model 'gpt5'"),
    # counts <= 0 (issue 9: accepted)
    "train.seq_len 0": (_set("train", "seq_len", 0), "train.seq_len: must be >= 1"),
    "train.batch_size 0": (_set("train", "batch_size", 0), "train.batch_size: must be >= 1"),
    "train.log_every 0": (_set("train", "log_every", 0), "train.log_every: must be >= 1"),
    "train.tokens under one batch": (_set("train", "tokens", 1000),
                                     "tokens must be at least seq_len*batch_size = 1024"),
    "train.warmup_steps -1": (_set("train", "warmup_steps", -1), "train.warmup_steps: must be >= 0"),
    # smoke: 40 steps; b1.58 (two-stage) starts stage two at step 20
    "warmup as long as training": (_set("train", "warmup_steps", 40), "train.warmup_steps: 40 is not fewer than the 40"),
    "warmup past b1.58's halfway": (_set("train", "warmup_steps", 21), "runs past step 20 of 40, where model 'bitnet_b158'"),
    "calibration.n_samples 0": (_set("calibration", "n_samples", 0), "calibration.n_samples: must be >= 1"),
    "calibration.seq_len 0": (_set("calibration", "seq_len", 0), "calibration.seq_len: must be >= 1"),
    "ppl seq_len 0": (_set("eval", "perplexity", "seq_len", 0), "eval.perplexity.seq_len: must be >= 2"),
    "ppl max_windows 0": (_set("eval", "perplexity", "max_windows", 0), "eval.perplexity.max_windows: must be >= 1"),
    "eval.batch_size 0": (_set("eval", "batch_size", 0), "eval.batch_size: must be >= 1"),
    "num_fewshot -1": (_set("eval", "num_fewshot", -1), "eval.num_fewshot: must be >= 0"),
    "train_chars -1": (_set("tokenizer", "train_chars", -1), "tokenizer.train_chars: must be >= 0"),
    # seeds
    "seed -1": (_set("seed", -1), "seed: must be >= 0"),
    "seed 2**70": (_set("seed", 2**70), "seed: integer out of range"),
    "seed 2**32": (_set("seed", 2**32), "seed: must be <= 4294967295"),
    "seed true": (_set("seed", True), "seed: expected an integer"),
    # rates: NaN, inf, negative
    "lr nan": (_set("models", "fp16", "lr", math.nan), "models.fp16.lr: expected a finite number"),
    "lr inf": (_set("models", "fp16", "lr", math.inf), "models.fp16.lr: expected a finite number"),
    "lr -inf": (_set("models", "fp16", "lr", -math.inf), "models.fp16.lr: expected a finite number"),
    "lr negative": (_set("models", "fp16", "lr", -1e-3), "models.fp16.lr: must be > 0"),
    # run crashed inside torch's Adam step (RuntimeError: value cannot be converted to type float without overflow)
    "lr 1e40": (_set("models", "fp16", "lr", 1e40), "models.fp16.lr: must be <= 1000000000.0"),
    "lr_stage2 1e40": (_set("models", "bitnet_b158", "lr_stage2", 1e40), "lr_stage2: must be <= 1000000000.0"),
    "weight_decay 1e40": (_set("models", "fp16", "weight_decay", 1e40), "weight_decay: must be <= 1000000000.0"),
    "lr_stage2 nan": (_set("models", "bitnet_b158", "lr_stage2", math.nan), "lr_stage2: expected a finite"),
    "lr_stage2 negative": (_set("models", "bitnet_b158", "lr_stage2", -1.0), "lr_stage2: must be > 0"),
    "weight_decay negative": (_set("models", "fp16", "weight_decay", -0.1), "weight_decay: must be >= 0"),
    "weight_decay inf": (_set("models", "fp16", "weight_decay", math.inf), "weight_decay: expected a finite"),
    "grad_clip nan": (_set("train", "grad_clip", math.nan), "train.grad_clip: expected a finite number"),
    "grad_clip negative": (_set("train", "grad_clip", -1.0), "train.grad_clip: must be >= 0"),
    "rope_theta inf": (_set("arch", "rope_theta", math.inf), "arch.rope_theta: expected a finite number"),
    "rope_theta negative": (_set("arch", "rope_theta", -1.0), "arch.rope_theta: must be > 0"),
    # float32 base 0, inv_freq inf: the first forward was NaN and the row said the model diverged at step 0
    "rope_theta 1e-100": (_set("arch", "rope_theta", 1e-100), "arch.rope_theta (1e-100) must be >= 1"),
    "rope_theta 0.5 in model arch": (_set("models", "fp16", "arch", {"rope_theta": 0.5}), "models.fp16.arch: arch.rope"),
    "rope_theta in model arch": (_set("models", "fp16", "arch", {"rope_theta": math.nan}), "models.fp16.arch.rope_theta"),
    "huge number": (_set("train", "grad_clip", 2**70), "train.grad_clip: number out of range"),
    "lr as YAML 1.1 text": (_set("models", "fp16", "lr", "1e-3"), "expected a number, got '1e-3' (YAML reads"),
    # lengths beyond the model's context (smoke: arch.max_seq_len 256)
    "calibration.seq_len beyond context": (
        lambda r: (r["quantize"].append({"method": "gptq", "w_bits": 4}), r["calibration"].update(seq_len=100000)),
        "calibration.seq_len: 100000 is longer than the context of model 'fp16' (256"),
    "ppl seq_len beyond context": (_set("eval", "perplexity", "seq_len", 100000), "eval.perplexity.seq_len: 100000"),
    "train.seq_len beyond context": (lambda r: r["train"].update(seq_len=257, tokens=10**7),
                                     "train.seq_len: 257 is longer than the context of model"),
    "per-model context": (_set("models", "bitnet_b1", "arch", {"max_seq_len": 32}), "of model 'bitnet_b1' (32"),
    # method settings that were passed through untyped
    "gptq sym 'false'": (_quant({"method": "gptq", "sym": "false"}), "quantize[0].sym: expected true/false"),
    "absmax w_bits true": (_quant({"method": "absmax", "w_bits": True}), "quantize[0].w_bits: expected a number"),
    "gptq act_order 'yes'": (_quant({"method": "gptq", "act_order": "yes"}), "quantize[0].act_order: expected true"),
    "gptq group_size 1.5": (_quant({"method": "gptq", "group_size": 1.5}), "quantize[0].group_size: expected an int"),
    "smoothquant alpha true": (_quant({"method": "smoothquant", "alpha": True}), "quantize[0].alpha: expected a num"),
    "quip seed -1": (_quant({"method": "quip", "seed": -1}), "quantize[0].seed: must be >= 0"),
    "gptq damp nan": (_quant({"method": "gptq", "damp": math.nan}), "quantize[0].damp: expected a finite"),
    "bits list in list": (_quant({"method": "absmax", "w_bits": [[8]]}), "quantize[0].w_bits: expected a number"),
    "too many settings": (_quant({"method": "absmax", "w_bits": [8] * 65}), "a bits list must have 1 to 64"),
    "absmax W16A16": (_quant({"method": "absmax", "w_bits": [8, 16], "a_bits": 16}), "w_bits 16 with a_bits 16 quantizes nothing"),
    # PTQ of natively low-bit models is refused
    "PTQ of bitnet_b158": (_set("quantize", 0, "models", ["bitnet_b158"]),
                           "quantize[0].models: 'bitnet_b158' is a BitNet b1.58 model"),
    "PTQ of bitnet_b1": (_set("quantize", 0, "models", ["fp16", "bitnet_b1"]), "'bitnet_b1' is a BitNet b1 model"),
    # sources and names
    "source /nonexistent": (_set("models", "fp16", "source", "/nonexistent"), "models.fp16.source: '/nonexistent' does not exist"),
    "source empty": (_set("models", "fp16", "source", ""), "models.fp16.source: empty"),
    "source not a hub id": (_set("models", "fp16", "source", "a b"), "models.fp16.source: 'a b' does not exist"),
    "source not a checkpoint": (_set("models", "fp16", "source", "/proc"), "holds no config.json"),
    "source .": (_set("models", "fp16", "source", "."), "holds no config.json"),
    "source ./missing": (_set("models", "fp16", "source", "./missing/model"), "models.fp16.source: './missing/model' does not exist"),
    # keys that only training reads, on a model that is loaded (or a schedule without them): silently ignored before
    "source with lr": (lambda r: r["models"]["fp16"].update(source="org/name", lr=1e-3), "models.fp16: lr: a `source:`"),
    "source with weight_decay": (lambda r: r["models"]["fp16"].update(source="org/name", weight_decay=0.0), "weight_decay: a `source:`"),
    "source with arch": (lambda r: r["models"]["fp16"].update(source="org/name", arch={"num_layers": 1}), "arch: a `source:`"),
    "source with kind": (lambda r: r["models"]["bitnet_b1"].update(source="org/name"), "models.bitnet_b1: kind: a `source:`"),
    "lr_stage2 one-stage": (_set("models", "fp16", "lr_stage2", 1e-3), "lr_stage2: kind fp16 trains with a one-stage"),
    "lr_stage2 b1": (_set("models", "bitnet_b1", "lr_stage2", 1e-3), "lr_stage2: kind bitnet_b1 trains with a one-stage"),
    "name empty": (_set("name", ""), "name: must be a plain name"),
    "name ..": (_set("name", ".."), "name: must be a plain name"),
    "name ../../x": (_set("name", "../../x"), "name: must be a plain name"),
    "name absolute": (_set("name", "/tmp/x"), "name: must be a plain name"),
    "name with slash": (_set("name", "a/b"), "name: must be a plain name"),
    "name with NUL": (_set("name", "a\x00b"), "name: a string must not contain a NUL"),
    "name 1 MB": (_set("name", "x" * 1_000_000), "larger than 262144 bytes"),
    "name 100 KB": (_set("name", "x" * 100_000), "name: longer than 100 characters"),
    "name 101 chars": (_set("name", "x" * 101), "name: longer than 100 characters"),
    "model name ../x": (lambda r: r["models"].update({"../x": {"kind": "fp16"}}), "a model name: must be a plain"),
    "model name not a string": (lambda r: r["models"].update({1: {"kind": "fp16"}}), "models: keys must be strings"),
    "long model name": (lambda r: r["models"].update({"m" * 5000: {"kind": "fp8"}}), "models.'mmmm"),
    "data_dir with NUL": (_set("data_dir", "/tmp/\x00x"), "data_dir: a string must not contain a NUL"),
    "executor address on local": (_set("executor", {"kind": "local", "address": "1.2.3.4:6379"}), "executor.address: '1.2.3.4:6379' is for kind ray"),
    "device": (_set("device", "tpu"), "device: expected one of auto, cpu, cuda"),
    "dtype": (_set("dtype", "fp8"), "dtype: expected one of auto, float32, bfloat16, float16"),
    "layout": (_set("layout", "table9"), "layout: expected one of"),
    "duplicate task": (_set("eval", "tasks", ["piqa", "piqa"]), "eval.tasks: duplicate items"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_recipe_is_one_line_exit_2_nothing_written(tmp_path, capsys, case):
    mutate, needle = BAD[case]
    err = assert_refused(write(tmp_path, mutate), capsys, needle)
    assert "x" * 61 not in err  # an error line never echoes an unbounded value


def _bomb(levels: int = 9) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    return "\n".join(lines)


def _text(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "r.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


SMOKE_TEXT = SMOKE.read_text()
BAD_TEXT = {
    "duplicate key": (SMOKE_TEXT + "seed: 1\n", "line 36: duplicate key 'seed'"),
    "duplicate nested key": (SMOKE_TEXT.replace("  seq_len: 64\n", "  seq_len: 64\n  seq_len: 32\n", 1),
                             "duplicate key 'seq_len'"),
    "not UTF-8": (b"\xff\xfe name: x\n", "not UTF-8 text (byte 0)"),
    "deep nesting": ("description: " + "[" * 50_000 + "]" * 50_000 + "\n", "nested deeper than 64 levels"),
    "deep mapping": ("x: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n", "nested deeper than 64 levels"),
    "alias bomb": (_bomb() + "\n" + SMOKE_TEXT.replace("name: smoke", "name: smoke\ndescription: *a8"),
                   "more than 100000 values once YAML aliases are expanded"),
    "recursive alias": ("a: &a [*a]\n" + SMOKE_TEXT, "recursive YAML alias"),
    "huge integer literal": (SMOKE_TEXT.replace("seed: 0", "seed: " + "9" * 5000), "integer literal of 5000"),
    "not a mapping": ("- just\n- a list\n", "a recipe is a YAML mapping"),
    "bad YAML": ("name: [unclosed\n", "not valid YAML"),
    "empty file": ("", "a recipe is a YAML mapping"),
}


@pytest.mark.parametrize("case", sorted(BAD_TEXT))
def test_bad_recipe_text(tmp_path, capsys, case):
    text, needle = BAD_TEXT[case]
    assert_refused(_text(tmp_path, text), capsys, needle)


@pytest.mark.parametrize("where", ["description: *a8", "eval: {limit: *a8}", "arch: {num_layers: *a8}",
                                   "quantize: [{method: absmax, w_bits: *a8}]", "models: {fp16: {arch: *a8}}"])
def test_alias_bombs_fail_fast(tmp_path, capsys, where):
    """The five places issue 9's alias bombs hung in (one printed a 312 MB error line)."""
    assert_refused(_text(tmp_path, _bomb() + "\nname: x\n" + where + "\n"), capsys, "YAML aliases")


def test_a_setting_written_out_and_its_defaults_are_one_cell(tmp_path):
    """`{method: absmax}` and `{method: absmax, w_bits: 8, a_bits: 16}` are the same setting (8 read as 8.0):
    it ran twice and the table showed two identical rows."""
    def mutate(r):
        r["quantize"] = [{"method": "absmax"}, {"method": "absmax", "w_bits": 8, "a_bits": 16},
                         {"method": "gptq"}, {"method": "gptq", "w_bits": 4.0, "group_size": 128}]
    cells = [c for c in expand_cells(load_recipe(write(tmp_path, mutate))) if c.method != "none"]
    assert [(c.model, c.method) for c in cells] == [("fp16", "absmax"), ("fp16", "gptq")]


def test_small_aliases_still_work(tmp_path):
    text = SMOKE_TEXT.replace("  fp16: {kind: fp16}", "  fp16: &m {kind: fp16}\n  fp16b: *m")
    assert [c.model for c in expand_cells(load_recipe(_text(tmp_path, text)))].count("fp16b") == 5


def _plant_file(tmp_path: Path) -> Path:
    (tmp_path / "afile").write_text("x")
    return tmp_path / "afile"


BAD_FOLDERS = {  # run only: validate does not look at output folders
    "output_dir is a file": (lambda t: {"output_dir": str(_plant_file(t))}, "output_dir: ", "is a file"),
    "output_dir under a file": (lambda t: {"output_dir": str(_plant_file(t) / "sub")}, "output_dir: ", "under a file"),
    "output_dir /": (lambda t: {"output_dir": "/"}, "output_dir: ", "root folder"),
    "output_dir /proc": (lambda t: {"output_dir": "/proc/ptq"}, "output_dir: ", "under /proc"),
    "output_dir data folder": (lambda t: {"output_dir": str(DATA)}, "output_dir: ", "data folder"),
    "output_dir in data folder": (lambda t: {"output_dir": str(DATA / "runs" / "x")}, "output_dir: ", "data folder"),
    "cache_dir is a file": (lambda t: {"cache_dir": str(_plant_file(t))}, "cache_dir: ", "is a file"),
    "cache_dir under a file": (lambda t: {"cache_dir": str(_plant_file(t) / "c")}, "cache_dir: ", "under a file"),
    "cache_dir data folder": (lambda t: {"cache_dir": str(DATA)}, "cache_dir: ", "data folder"),
    "cache_dir /": (lambda t: {"cache_dir": "/"}, "cache_dir: ", "root folder"),
    # a rebuilt artefact is removed whole: the run folder with it (a traceback, and its manifest and rows gone)
    "output_dir in a cached model": (lambda t: {"cache_dir": str(t / "c"), "output_dir": str(t / "c" / "models" / "m" / "out")},
                                     "output_dir: ", "inside the cache folder"),
    "output_dir is the cache's kld": (lambda t: {"cache_dir": str(t / "c"), "output_dir": str(t / "c" / "kld")},
                                      "output_dir: ", "inside the cache folder"),
}


@pytest.mark.parametrize("case", sorted(BAD_FOLDERS))
def test_run_refuses_bad_folders_before_writing(tmp_path, capsys, case):
    make, needle, detail = BAD_FOLDERS[case]
    path = write(tmp_path, lambda r: r.update(make(tmp_path)))
    assert main(["validate", str(path)]) == 0
    capsys.readouterr()
    err = assert_refused(path, capsys, needle, commands=("run",))
    assert detail in err


@pytest.mark.parametrize("key", ["output_dir", "cache_dir"])
def test_home_in_folders_is_expanded_where_files_are_written(tmp_path, capsys, monkeypatch, key):
    """`~` was expanded by the checks before writing but not by the writing: results went to ./~/..., and
    a `~` path into the data folder passed the data-folder guard."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = write(tmp_path, lambda r: r.update({key: "~/x"}))
    r = load_recipe(path)
    assert (r.out_dir if key == "output_dir" else r.cache_path) == tmp_path / "home" / "x"
    monkeypatch.setenv("HOME", str(DATA))
    assert "data folder" in assert_refused(path, capsys, f"{key}: ", commands=("run",))


def _damaged_data(tmp_path: Path, rel: str, damage) -> Path:
    """A data folder of links to the real files, but `rel` a damaged copy (`damage` gets its text's bytes
    and returns the file's bytes: compressed ones for a .gz)."""
    folder = tmp_path / "data"
    for f in DATA.rglob("*"):
        if f.is_file():
            (folder / f.relative_to(DATA)).parent.mkdir(parents=True, exist_ok=True)
            (folder / f.relative_to(DATA)).symlink_to(f)
    target = folder / rel
    target.unlink()
    opener = gzip.open if rel.endswith(".gz") else open
    with opener(DATA / rel, "rb") as fh:
        target.write_bytes(damage(fh.read()))
    return folder


BAD_DATA = {  # (file, damage, message): a traceback in `run` before, after its manifest was written
    "broken JSON line": ("wikitext2/test.jsonl", lambda b: b.replace(b"}\n", b"\n", 1), "wikitext2/test.jsonl:1: not JSON lines"),
    "row without text": ("wikitext2/test.jsonl", lambda b: b'{"txt": "a"}\n' + b, 'test.jsonl:1: expected a JSON object with a "text" string'),
    "not UTF-8": ("wikitext2/test.jsonl", lambda b: b'{"text": "a"}\n\xff\xfe\n', "wikitext2/test.jsonl: not UTF-8 text"),
    "task line broken": ("piqa/validation.jsonl", lambda b: b + b"{oops\n", "piqa/validation.jsonl:1839: not JSON lines"),
    "empty task file": ("piqa/validation.jsonl", lambda b: b"", "piqa/validation.jsonl: holds no rows"),
    "task row not an object": ("piqa/validation.jsonl", lambda b: b"[1, 2]\n", "validation.jsonl:1: expected a JSON object"),
    # valid JSON without the task's fields: lm-eval's doc_to_choice raised KeyError after training
    "task row lacks a field": ("piqa/validation.jsonl", lambda b: b'{"goal": "a", "sol1": "b", "label": 0}\n' + b,
                               "piqa/validation.jsonl:1: expected a JSON object with keys goal, sol1, sol2, label (no sol2)"),
    # valid JSON, a field of another type than the HF schema's: a label "1" made lm-eval score every document
    # wrong (looked up among the choices' texts), with no error; a null label was a TypeError after training
    "task label a string": ("piqa/validation.jsonl", lambda b: b.replace(b'"label": 1}', b'"label": "1"}'),
                            "piqa/validation.jsonl:2: expected a JSON object with keys goal, sol1, sol2, label "
                            "(label is str, not int)"),
    "task label null": ("piqa/validation.jsonl", lambda b: b'{"goal": "a", "sol1": "b", "sol2": "c", "label": null}\n' + b,
                        "(label is NoneType, not int)"),
    # a repeated document: lm-eval counted it twice (1838 piqa rows doubled: 3676 documents, stderr / sqrt(2))
    "task row repeated": ("piqa/validation.jsonl", lambda b: b + b.splitlines(True)[4],
                          "piqa/validation.jsonl:1839: repeats line 5 (a document counted twice)"),
    # all-whitespace training text: "the training text has 4 tokens" only after the manifest was written
    "blank training text": ("train_corpus/gutenberg_en.jsonl.gz", lambda b: gzip.compress(b'{"text": " \\n\\t "}\n' * 9),
                            "gutenberg_en.jsonl.gz: holds no text (every row's text is blank)"),
    # a gold index past the choices: lm-eval scored the document wrong with a warning only
    "task answer past the choices": ("piqa/validation.jsonl", lambda b: b.replace(b'"label": 1}', b'"label": 2}', 1),
                                     "piqa/validation.jsonl:2: its answer is none of its choices"),
    "gzip cut short": ("train_corpus/c4_en_train_shard00000_head.jsonl.gz", lambda b: gzip.compress(b)[:5000],
                       "c4_en_train_shard00000_head.jsonl.gz: unreadable (EOFError"),
}


def test_every_task_file_names_the_fields_lm_eval_reads():
    from ptq_bench.eval.harness import FILE_ANSWERS, FILE_FIELDS, TASKS

    assert set(FILE_FIELDS) == {rel for spec in TASKS.values() for rel in spec.data_files.values()}
    # every multiple-choice file says where its gold answer is (the rolling wikitext pages have none)
    assert set(FILE_ANSWERS) == {rel for rel in FILE_FIELDS if TASKS["wikitext"].data_files["test"] != rel}


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_run_refuses_damaged_data_before_writing(tmp_path, capsys, case):
    rel, damage, needle = BAD_DATA[case]
    data = _damaged_data(tmp_path, rel, damage)
    path = write(tmp_path, lambda r: (r.update(data_dir=str(data), output_dir=str(tmp_path / "out")),
                                      r["eval"].update(tasks=["piqa"])))
    assert needle in assert_refused(path, capsys, "ptq-bench: error: ")  # validate and run


def test_run_refuses_unwritable_folder(tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root can write anywhere")
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    path = write(tmp_path, lambda r: r.update(output_dir=str(ro / "out")))
    assert_refused(path, capsys, "not writable", commands=("run",))


def test_run_refuses_a_read_only_results_file(tmp_path, capsys):
    """A results.jsonl the user cannot write (its folder writable) was found only when the first cell's row
    was appended: a PermissionError traceback after the work, the invocation left open."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.jsonl").write_text("")
    (out / "results.jsonl").chmod(0o444)
    if os.access(out / "results.jsonl", os.W_OK):
        pytest.skip("this process can write a read-only file (root with CAP_DAC_OVERRIDE)")
    path = write(tmp_path, lambda r: r.update(output_dir=str(out)))
    assert "results.jsonl is not writable" in assert_refused(path, capsys, "output_dir: ", commands=("run",))


def test_cli_output_dir_override_is_checked(tmp_path, capsys):
    path = write(tmp_path, lambda r: None)
    assert main(["run", str(path), "--output-dir", str(_plant_file(tmp_path))]) == 2
    assert "output_dir: " in capsys.readouterr().err and not (tmp_path / "out").exists()


def _source(tmp_path: Path, cfg: dict, tokenizer: bool = True) -> Path:
    """A checkpoint folder as `validate` sees it: config.json (and a tokenizer file), no weights read."""
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", **cfg}))
    if tokenizer:
        (folder / "tokenizer.json").write_text("{}")
    return folder


def test_source_without_tokenizer_is_refused_before_anything_is_written(tmp_path, capsys):
    """Its requests cannot be encoded; `run` used to find out after writing the run folder's manifest."""
    src = _source(tmp_path, {"max_position_embeddings": 128}, tokenizer=False)
    path = write(tmp_path, lambda r: r["models"].update(fp16={"source": str(src)}))
    assert "holds no tokenizer (tokenizer.json or GGUF vocab)" in assert_refused(path, capsys, "models.fp16.source: ")


def test_offload_of_a_checkpoint_without_safetensors_is_refused_before_anything_is_written(tmp_path, capsys):
    src = _source(tmp_path, {"max_position_embeddings": 128})
    (src / "pytorch_model.bin").write_text("{}")
    path = write(tmp_path, lambda r: r.update(models={"m": {"source": str(src)}}, offload=True, quantize=[]))
    assert "offload reads safetensors checkpoints only" in assert_refused(path, capsys, "models.m.source: ")


def test_relative_source_paths_are_not_taken_for_hub_ids(tmp_path, capsys, monkeypatch):
    """`ckpt/model` matches a hub id's form: read from another folder it was taken for one (downloaded at run
    time: another model, or none) without a word from validate."""
    (tmp_path / "ck").mkdir()
    _source(tmp_path / "ck", {"max_position_embeddings": 128})  # tmp/ck/ckpt, beside the recipe
    path = write(tmp_path, lambda r: r["models"].update(fp16={"source": "ck/ckpt"}))
    monkeypatch.chdir(tmp_path)
    assert main(["validate", str(path)]) == 0  # read from here: the folder
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert "is not in the current folder" in assert_refused(path, capsys, "models.fp16.source: 'ck/ckpt'")
    monkeypatch.chdir(tmp_path)
    missing = write(tmp_path, lambda r: r["models"].update(fp16={"source": "ck/other"}))
    assert "does not exist (its folder 'ck' does)" in assert_refused(missing, capsys, "models.fp16.source: ")
    hub = write(tmp_path, lambda r: r["models"].update(fp16={"source": "nobody-here/not-a-model"}))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)  # offline, it is refused (test_hub_cache)
    assert main(["validate", str(hub)]) == 0
    assert "models.fp16.source: hub id 'nobody-here/not-a-model' is not in the local hub cache" in capsys.readouterr().out


def test_source_bitnet_checkpoint_is_not_quantized(tmp_path, capsys):
    src = _source(tmp_path, {"max_position_embeddings": 128, "quantization_config": {"quant_method": "bitnet"}})

    def mutate(r):
        r["models"] = {"hf": {"source": str(src)}, "fp16": {"kind": "fp16"}}
        r["quantize"] = [{"method": "absmax", "w_bits": 4}]

    path = write(tmp_path, mutate)
    assert [c.model for c in expand_cells(load_recipe(path)) if c.method != "none"] == ["fp16"]  # not a default target
    path = write(tmp_path, lambda r: (mutate(r), r["quantize"][0].update(models=["hf"])))
    assert_refused(path, capsys, "quantize[0].models: 'hf' is a BitNet (HF) model (bitnet_hf)")


def test_source_context_is_checked(tmp_path, capsys):
    src = _source(tmp_path, {"max_position_embeddings": 32})
    path = write(tmp_path, lambda r: r.update(models={"hf": {"source": str(src)}}, quantize=[]))
    assert_refused(path, capsys, "eval.perplexity.seq_len: 64 is longer than the context of model 'hf' (32")


def test_calibration_rows_an_xlstm_splits_are_refused(tmp_path, capsys):
    """xLSTM runs a row longer than max_inference_chunksize chunk by chunk: the runner would see the first chunk."""
    xlstm = {"model_type": "xlstm", "weight_mode": "single", "use_bias": False}
    src = _source(tmp_path, {**xlstm, "max_inference_chunksize": 32})
    path = write(tmp_path, lambda r: r.update(models={"x": {"source": str(src)}},
                                              quantize=[{"method": "gptq", "w_bits": 4}]))
    assert_refused(path, capsys, "calibration.seq_len: 64 is longer than the rows model 'x' runs whole "
                                 "(max_inference_chunksize 32)")
    for chunk, says in ((63, "(max_inference_chunksize 63)"), (64, None)):  # a row of 64 runs whole in chunks of 64,
        (src / "config.json").write_text(json.dumps({**xlstm, "max_inference_chunksize": chunk}))  # not of 63
        if says:
            assert_refused(path, capsys, says)
        else:
            assert main(["validate", str(path)]) == 0
    (src / "config.json").write_text(json.dumps(xlstm))  # transformers' default, 16384
    assert main(["validate", str(path)]) == 0
    assert load_recipe(path).calibration.seq_len == 64


def test_hub_id_source_is_allowed(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)  # offline, it is refused (test_hub_cache)
    path = write(tmp_path, lambda r: r.update(models={"hf": {"source": "org/name"}}, quantize=[]))
    assert load_recipe(path).models["hf"].source == "org/name"


def test_missing_recipe_file(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert "recipe file not found" in capsys.readouterr().err


def test_load_rejects_non_mapping(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(RecipeError, match="YAML mapping"):
        load_recipe(path)


def test_help_is_instant():
    code = "import sys, ptq_bench.cli as c; c.build_parser(); print(sorted(m for m in sys.modules if m in ('torch','transformers','lm_eval')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_validate_imports_no_torch_or_pandas():
    code = ("import sys; from ptq_bench.cli import main; rc = main(['validate', sys.argv[1]]); "
            "print(rc, sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'pandas', 'numpy', 'lm_eval')))")
    out = subprocess.run([sys.executable, "-c", code, str(ROOT / "recipes" / "quickstart.yaml")],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("0 []"), out


# ----------------------------------------------------------------------------- one place for each name list


def test_catalog_matches_registry():
    """quant/configs.py CATALOG (read by validate) and the registry (read by run) name the same methods; the
    registry's config class and calibration need are CATALOG's (a method cannot register without an entry)."""
    from ptq_bench.quant import METHODS, load_all
    from ptq_bench.quant.configs import CATALOG

    load_all()
    assert sorted(METHODS) == sorted(CATALOG)
    for name, m in METHODS.items():
        assert (m.config_cls, m.needs_calibration) == (CATALOG[name].config, CATALOG[name].needs_calibration), name
    from ptq_bench.quant.registry import register

    with pytest.raises(ValueError, match="no CATALOG entry: add its config"):
        register("not_in_catalog")


def test_registry_make_config_goes_through_the_loader():
    from ptq_bench.quant import get_method

    for method, params, needle in [("gptq", {"sym": "false"}, "q.sym: expected true/false"),
                                   ("absmax", {"w_bits": True}, "q.w_bits: expected a number"),
                                   ("gptq", {"act_order": "yes"}, "q.act_order"),
                                   ("gptq", {"group_size": 1.5}, "q.group_size"),
                                   ("smoothquant", {"alpha": True}, "q.alpha")]:
        with pytest.raises(RecipeError, match=needle):
            get_method(method).make_config(params, "q")


def test_layout_names_match_paper():
    from ptq_bench.report.layouts import LAYOUT_NAMES
    from ptq_bench.report.paper import LAYOUTS

    assert tuple(LAYOUTS) == LAYOUT_NAMES


def test_kinds_table_is_what_build_and_train_use():
    from ptq_bench.kinds import BITNET_MODES, KINDS, TRAINED_KINDS
    from ptq_bench.models.arch import ArchConfig
    from ptq_bench.models.bitlinear import BitLinear
    from ptq_bench.models.build import MODEL_KINDS, build_model
    from ptq_bench.models.train import SCHEDULES, make_schedule

    assert MODEL_KINDS == TRAINED_KINDS == tuple(k for k, v in KINDS.items() if v.schedule is not None)
    arch = ArchConfig(hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, max_seq_len=8)
    for kind in TRAINED_KINDS:
        modes = {m.mode for m in build_model(kind, arch, 300, seed=0).modules() if isinstance(m, BitLinear)}
        assert modes == ({BITNET_MODES[kind]} if kind in BITNET_MODES else set()), kind
        assert make_schedule(kind) == make_schedule(kind, None) and KINDS[kind].schedule in SCHEDULES
    # the decision as data: PTQ may target a model of float weights only (a new float kind may join fp16)
    assert [k for k, v in KINDS.items() if v.ptq_allowed] == [k for k, v in KINDS.items() if v.native_bits[0] == 16]
    assert all(v.ptq_allowed for v in KINDS.values() if v.ptq_default) and KINDS["fp16"].ptq_default


def test_ls_lists_the_tables(capsys):
    from ptq_bench.kinds import KINDS
    from ptq_bench.quant.configs import CATALOG

    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    for name in [*KINDS, *CATALOG, *(k.display for k in KINDS.values())]:
        assert name in out, name
    assert re.search(r"\n  bitnet_b158 +BitNet b1\.58 +W1\.58A8 +trained, no PTQ\n", out)
    from ptq_bench.families import SUPPORTED_MODEL_TYPES

    families = out.split("model families")[1]
    assert all(f"\n  {t} " in families for t in SUPPORTED_MODEL_TYPES)
    assert re.search(r"\n  olmo2 +7 linears per block, no norm feeds a linear: no SmoothQuant\n", families)
    assert re.search(r"\n  stablelm +7 linears per block, layernorm, needs use_parallel_residual=False\n", families)
    # a hybrid names each block kind's count
    assert re.search(r"\n  lfm2 +7 linears per block; 5 in conv blocks, gain\n", families)
    starts = {line.index(" linears per block") - len(line.split()[1]) for line in families.splitlines()[1:] if line}
    assert len(starts) == 1, starts  # one column, however long a family's name


def test_ls_columns_fit_the_longest_name(capsys, monkeypatch):
    """`ls` padded method names to 12 and kinds' display names to 13 characters: "BitNet b1 (HF)" (14) pushed its
    row's bits out of the column, and so would any longer name added to CATALOG or KINDS."""
    from ptq_bench.quant.configs import CATALOG

    monkeypatch.setitem(CATALOG, "rtn_mse_long_name", CATALOG["absmax"])
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    methods = out.split("methods:\n")[1].split("tasks:")[0].splitlines()
    assert len({line.index("w_bits=") for line in methods if "(calibrated)" not in line}) == 1, methods
    kinds = out.split("hub id):\n")[1].split("model families")[0].splitlines()
    assert len({re.search(r" W[\d.]+A\d+ ", line).start() for line in kinds}) == 1, kinds
