"""Bad input to a benchmark script: one line that names the problem and exit 2, before any heavy work, as
`ptq-bench` does; exit 1 stays a script's "the two sides disagree" (benchmarks/README.md).

The argparse types below refuse a value while the arguments are parsed (argparse prints the usage and one
`error:` line, exit 2); `exit_with(main)` turns the toolkit's own input errors (`PtqBenchError`: a missing
data file, an unknown source) into one line and exit 2. Imports are light: torch only inside `device`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ptq_bench.cli import at_least  # noqa: E402
from ptq_bench.errors import PtqBenchError, first_line  # noqa: E402

T = TypeVar("T")

positive = at_least(1)  # an integer >= 1 (windows, repeats, sizes)
non_negative = at_least(0)  # an integer >= 0 (where 0 means none or all, as the option's help says)


def folder(text: str) -> Path:
    """An argparse type: an existing folder."""
    path = Path(text).expanduser()
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{'not a folder' if path.exists() else 'folder not found'}: {text}")
    return path


def file(text: str) -> Path:
    """An argparse type: an existing regular file."""
    path = Path(text).expanduser()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{'not a regular file' if path.exists() else 'file not found'}: {text}")
    return path


def checkpoint(text: str) -> Path:
    """An argparse type: a Hugging Face checkpoint folder (one holding config.json)."""
    path = folder(text)
    if not (path / "config.json").is_file():
        raise argparse.ArgumentTypeError(f"no config.json in {text}: not a Hugging Face checkpoint folder")
    return path


def new_or_folder(text: str) -> Path:
    """An argparse type: a folder to write into, existing or not, but not a file."""
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"not a folder: {text}")
    return path


def source(text: str) -> str:
    """An argparse type: a model source as a recipe's `source:` takes it (ptq_bench.sources.inspect_source)."""
    from ptq_bench.sources import inspect_source

    try:
        inspect_source(text, "")
    except PtqBenchError as exc:
        raise argparse.ArgumentTypeError(first_line(exc).removeprefix(": ")) from None
    return text


def device(text: str) -> str:
    """An argparse type: a torch device this machine has (cpu, cuda, cuda:1, ...); cuda without CUDA is refused."""
    import torch

    try:
        dev = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"unknown device {text!r} (cpu, cuda, cuda:N, ...)") from None
    backend = getattr(torch, dev.type, None)
    if dev.type != "cpu" and not (hasattr(backend, "is_available") and backend.is_available()):
        raise argparse.ArgumentTypeError(f"{text}: no {dev.type} device is available here")
    if dev.index is not None and dev.type == "cuda" and dev.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return text


def checked(parser: argparse.ArgumentParser, kind: Callable[[str], T], text: str, what: str) -> T:
    """`kind(text)` for a value that no option gave (an environment variable's): a refusal is parser.error
    naming `what`."""
    try:
        return kind(text)
    except argparse.ArgumentTypeError as exc:
        parser.error(f"{what}: {exc}")


def method_config(parser: argparse.ArgumentParser, method: str, options: str, **params: Any) -> Any:
    """The toolkit's config of `method` from the options' values (its own bounds: bits, group size, damping);
    a value it refuses is parser.error naming `options`."""
    from ptq_bench.quant.configs import make_config

    try:
        return make_config(method, params)
    except PtqBenchError as exc:
        parser.error(f"{options}: {first_line(exc)}")


def comparison_texts(data_dir: Path | None) -> tuple[list[str], str]:
    """(C4 calibration documents, WikiText-2 test text) that a comparison script reads from `data_dir` (else
    $PTQ_BENCH_DATA), read before anything heavy: a missing folder or file is a DataError (`exit_with`)."""
    from ptq_bench.data import calibration_documents, perplexity_text, resolve_data_dir

    resolved = resolve_data_dir(data_dir)
    return calibration_documents(resolved), perplexity_text("wikitext2", resolved)


def exit_with(main: Callable[[], int | None]) -> NoReturn:
    """sys.exit(main()), with the toolkit's input errors (PtqBenchError) as one line and exit 2."""
    try:
        code = main()
    except PtqBenchError as exc:
        print(f"{Path(sys.argv[0]).name}: error: {first_line(exc, type(exc).__name__)}", file=sys.stderr)
        code = 2
    sys.exit(code)
