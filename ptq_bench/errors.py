"""User-facing errors: each carries a one-line message that names the offending key or file."""


def first_line(exc: BaseException, default: str = "") -> str:
    """The first non-blank line of an exception's message (transformers' ImportErrors begin with a newline),
    stripped; `default` when it has none."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), default)


class PtqBenchError(Exception):
    """An error the CLI prints as one line and turns into exit code 2."""


class RecipeError(PtqBenchError):
    """A recipe that does not validate (unknown key, wrong type, bad value, missing file)."""


class DataError(PtqBenchError):
    """A missing or malformed data folder or file."""


class QuantError(PtqBenchError):
    """A quantization step that cannot do what its row would claim (nothing quantized, an unresolvable
    smoothing pair, a model whose linears are already low-bit)."""


class UnreachedLinear(QuantError):
    """A linear no calibration token reached (an expert the router never picked): its statistic is empty."""


class Interrupted(KeyboardInterrupt):
    """A Ctrl-C (or SIGTERM, which the CLI turns into one) after a run had recorded it: the message says
    what is stored and how to go on."""
